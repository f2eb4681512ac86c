"""A third-party integration, written with a real OAuth2 client library (Authlib on requests), running
both flows against a tenant host through the gateway: client credentials, and the authorization code
with PKCE (S256) where it plays the user's browser on the consent page too; each token then calls a
scoped API route, the code flow's token is refreshed and finally revoked.

Run by backend/tests/api/oauth.rs with: GATEWAY (http://127.0.0.1:PORT), HOST (the tenant's host),
CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, USER_EMAIL, USER_PASSWORD. Prints one JSON line of what it saw;
exits non-zero with the reason on the first surprise.
"""

import html
import json
import os
import re
import sys

import requests

from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

GATEWAY = os.environ["GATEWAY"]
HOST = os.environ["HOST"]
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
REDIRECT_URI = os.environ["REDIRECT_URI"]
TOKEN_URL = GATEWAY + "/oauth/token"
seen = {}


def fail(why):
    print(json.dumps({"failed": why, "seen": seen}))
    sys.exit(1)


def session(**kw):
    s = OAuth2Session(CLIENT_ID, CLIENT_SECRET, scope="files:read", **kw)
    # The gateway routes by host: every request names the tenant's.
    s.headers["Host"] = HOST
    return s


# 1. Client credentials: the integration acting for itself.
cc = session(token_endpoint_auth_method="client_secret_basic")
token = cc.fetch_token(TOKEN_URL, grant_type="client_credentials")
seen["cc_scope"] = token.get("scope")
seen["cc_files"] = cc.get(GATEWAY + "/api/files").status_code

# 2. Authorization code with PKCE, for a user of the tenant.
app = session(redirect_uri=REDIRECT_URI, code_challenge_method="S256",
              token_endpoint_auth_method="client_secret_post")
verifier = generate_token(64)
url, state = app.create_authorization_url(GATEWAY + "/oauth/authorize", code_verifier=verifier)
# The user's browser: the consent page, then the form it holds, approved with the user's password.
browser = requests.Session()
browser.headers["Host"] = HOST
page = browser.get(url)
if page.status_code != 200:
    fail(f"consent page answered {page.status_code}: {page.text[:200]}")
fields = {html.unescape(n): html.unescape(v)
          for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)}
fields.update(email=os.environ["USER_EMAIL"], password=os.environ["USER_PASSWORD"], decision="approve")
answer = browser.post(GATEWAY + "/oauth/authorize", data=fields, allow_redirects=False)
location = answer.headers.get("Location", "")
if answer.status_code != 303 or not location.startswith(REDIRECT_URI):
    fail(f"consent answered {answer.status_code} to {location!r}: {answer.text[:200]}")
# Authlib checks the returned state against its own, and sends the verifier.
token = app.fetch_token(TOKEN_URL, authorization_response=location, code_verifier=verifier)
seen["code_scope"] = token.get("scope")
seen["code_has_refresh"] = "refresh_token" in token
seen["code_files"] = app.get(GATEWAY + "/api/files").status_code
old_refresh = token["refresh_token"]
token = app.refresh_token(TOKEN_URL)
seen["refresh_rotated"] = token["refresh_token"] != old_refresh
seen["refreshed_files"] = app.get(GATEWAY + "/api/files").status_code
revoked = app.revoke_token(GATEWAY + "/oauth/revoke", token=token["refresh_token"],
                           token_type_hint="refresh_token")
seen["revoke_status"] = revoked.status_code
again = app.post(TOKEN_URL, data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"],
                                  "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
seen["refresh_after_revoke"] = again.json().get("error")
print(json.dumps(seen))
