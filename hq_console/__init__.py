"""The HQ console: web app for HQ staff (calls) and branch staff (booth monitoring)."""
