"""Server-rendered pages of the public verification (no sign-in). Japanese first, English
second; every value passes through :func:`html.escape`. They show only what is needed to
compare with the paper: never a name, an address or other personal data."""

from __future__ import annotations

from html import escape

from hq_console.issuance.service import Verdict, Verification

_HEAD = """<!doctype html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
<link rel="stylesheet" href="/verify/assets/verify.css">
</head>
<body class="login-body">
<main class="login-card verify-card">
"""
_TAIL = """</main>
</body>
</html>
"""


def _form(code: str = "") -> str:
    return f"""<form method="get" action="/verify" class="login-form verify-form">
  <label for="code">検証コード <span class="en" lang="en">Verification code</span></label>
  <input id="code" name="code" required maxlength="40" autocomplete="off" spellcheck="false"
    placeholder="XXXX-XXXX-XXXX-XXXX" value="{escape(code)}" autofocus>
  <button type="submit" class="primary big">確認する
    <span class="en" lang="en">Check</span></button>
</form>
"""


def verify_form_page(city_name: str) -> str:
    return (
        _HEAD.format(title=f"証明書の検証 | {escape(city_name)}")
        + f"""  <h1>証明書の検証<span class="en" lang="en">Certificate verification</span></h1>
  <p>{escape(city_name)}が発行した証明書に印字されている16文字の検証コードを入力してください。
    <br><span class="en" lang="en">Enter the 16-character code printed on a certificate issued
    by {escape(city_name)}.</span></p>
{_form()}
  <p class="verify-note">表示されるのは、有効・失効の別と、証明書の種類・文書番号・発行日・
    発行元だけです。<br><span lang="en">Only the status, kind, document number, issue date and
    issuing office are shown.</span></p>
"""
        + _TAIL
    )


_VERDICTS = {
    Verdict.VALID: (
        "有効",
        "Valid",
        "この証明書は有効です。お手元の紙の記載と照らし合わせてください。",
        "This certificate is valid. Compare the details with the paper.",
    ),
    Verdict.REVOKED: (
        "失効",
        "Revoked",
        "この証明書は失効しています。証明書として使えません。",
        "This certificate has been revoked and is no longer valid.",
    ),
    Verdict.UNKNOWN: (
        "該当なし",
        "Not found",
        "この検証コードの証明書は見つかりません。コードを確かめてもう一度入力してください。",
        "No certificate has this code. Check the code and try again.",
    ),
}


def verify_result_page(result: Verification, code: str) -> str:
    word, word_en, text, text_en = _VERDICTS[result.verdict]
    facts = ""
    if result.verdict != Verdict.UNKNOWN:
        rows = [
            ("証明書の種類", "Kind", f"{result.title}（{result.title_en}）"),
            ("文書番号", "Document number", result.document_number),
            ("発行日", "Issued on", result.issued_on),
            ("発行元", "Issuing office", result.issuer),
        ]
        if result.verdict == Verdict.REVOKED and result.revoked_on:
            rows.append(("失効日", "Revoked on", result.revoked_on))
        facts = (
            '  <dl class="verify-facts">\n'
            + "".join(
                f'    <dt>{escape(label)} <span class="en" lang="en">{escape(label_en)}</span></dt>'
                f"<dd>{escape(value)}</dd>\n"
                for label, label_en, value in rows
            )
            + "  </dl>\n"
        )
    return (
        _HEAD.format(title=f"{word} | 証明書の検証")
        + f"""  <h1>証明書の検証<span class="en" lang="en">Certificate verification</span></h1>
  <p class="verdict verdict-{result.verdict.value}" role="status">{word}<span class="en"
    lang="en">{word_en}</span></p>
  <p>{escape(text)}<br><span class="en" lang="en">{escape(text_en)}</span></p>
{facts}  <p class="verify-note">照合したコード <span lang="en">Code checked</span>:
    {escape(code)}</p>
{_form()}
"""
        + _TAIL
    )


def throttled_page() -> str:
    return (
        _HEAD.format(title="しばらくお待ちください | 証明書の検証")
        + """  <h1>しばらくお待ちください<span class="en" lang="en">Please wait</span></h1>
  <p>短い時間に多くの照会があったため、この端末からの照会をしばらく停止しています。
    時間をおいてからお試しください。<br><span class="en" lang="en">Too many lookups from this
    address. Please try again later.</span></p>
"""
        + _TAIL
    )
