"""The web page of ``adreg serve``: server-rendered Jinja2 templates over the same operations as the API.

Nothing is loaded from another origin (a Content-Security-Policy of ``'self'`` says so to the browser); a browser
signs in with an API token, kept in an httpOnly, SameSite=strict cookie; every form carries a CSRF token.
"""
