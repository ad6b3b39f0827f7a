"""Runs the whole system on one machine with simulated devices."""
