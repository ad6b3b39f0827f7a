"""Certificates issued by HQ: the connector to the city's business systems, certificate
PDFs signed with pyHanko, issuance records and the public verification page.

See docs/issuance.md.
"""
