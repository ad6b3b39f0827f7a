"""Server-rendered pages: sign-in and error pages. Japanese first, English second.

The call pages (``console.html``, ``branch.html``) are static files; only pages that carry
per-request text are rendered here, always through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape

_HEAD = """<!doctype html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
</head>
"""

LOGIN_FAILED = "ログインIDまたはパスワードが正しくありません。"
LOGIN_FAILED_EN = "The login or password is incorrect."
LOGIN_THROTTLED = (
    "ログインの失敗が続いたため、しばらく受け付けを停止しています。数分後にお試しください。"
)
LOGIN_THROTTLED_EN = "Too many failed attempts. Please try again in a few minutes."


def login_page(*, error: str | None = None, error_en: str | None = None, login: str = "") -> str:
    message = ""
    if error:
        message = (
            '<p class="form-error" role="alert">'
            f'{escape(error)}<br><span lang="en">{escape(error_en or "")}</span></p>'
        )
    return (
        _HEAD.format(title="ログイン | Ekichika 遠隔窓口")
        + f"""<body class="login-body">
<main class="login-card">
  <h1>遠隔窓口 職員ログイン<span class="en" lang="en">Remote counter — staff sign-in</span></h1>
  {message}
  <form method="post" action="/login" class="login-form">
    <label for="login">ログインID <span class="en" lang="en">Login</span></label>
    <input id="login" name="login" autocomplete="username" required maxlength="100"
      value="{escape(login)}" autofocus>
    <label for="password">パスワード <span class="en" lang="en">Password</span></label>
    <input id="password" name="password" type="password" autocomplete="current-password"
      required maxlength="200">
    <button type="submit" class="primary big">ログイン
      <span class="en" lang="en">Sign in</span></button>
  </form>
</main>
</body>
</html>
"""
    )


def message_page(title: str, title_en: str, text: str, text_en: str) -> str:
    return (
        _HEAD.format(title=escape(title))
        + f"""<body class="login-body">
<main class="login-card">
  <h1>{escape(title)}<span class="en" lang="en">{escape(title_en)}</span></h1>
  <p>{escape(text)}<br><span class="en" lang="en">{escape(text_en)}</span></p>
  <p><a href="/">トップへ戻る <span lang="en">Back</span></a></p>
  <form method="post" action="/logout"><button type="submit">ログアウト
    <span class="en" lang="en">Sign out</span></button></form>
</main>
</body>
</html>
"""
    )


def forbidden_page() -> str:
    return message_page(
        "権限がありません",
        "Forbidden",
        "このアカウントではこのページを利用できません。",
        "This account cannot use this page.",
    )
