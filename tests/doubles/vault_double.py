"""A Vault (or OpenBao) double: userpass login, KV v2, ACL policies, sealing.

Owns: an in-memory Vault that answers like the real one on the paths the demo app and
`demo_app.py setup` use (reference §2, §4.1, §5.2), with counters and switches.
Never: implements more of Vault than those paths; persists anything.

    vault = VaultDouble().start()
    vault.seed_demo(password="test123", flipt_host="http://127.0.0.1:8100", flipt_token="t")
    vault.logins                  # login requests received
    vault.sealed = True           # every call: 503 {"errors":["Vault is sealed"]}
    vault.login_delay_s = 0.08    # what bcrypt costs a real server
    vault.reject_next_reads = 1   # the next secret read: 403 as for a revoked token

Standalone, for the docs and the benchmark:

    python tests/doubles/vault_double.py --port 8200 --root-token root
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make the `doubles` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from doubles import Answer, Call, DoubleServer  # noqa: E402

DENIED = "permission denied"
ACL_DENIED = "1 error occurred:\n\t* permission denied\n\n"  # token fine, policy says no
POLICY_RULE = re.compile(r'path\s+"([^"]+)"\s*\{[^}]*?capabilities\s*=\s*\[([^\]]*)\]', re.S)
DEFAULT_TTL_S = 2764800  # 768 h: the server-wide default a dev server gives tokens


def envelope(data: Any = None, auth: Any = None) -> Dict[str, Any]:
    """The wrapper every non-empty Vault success answer has."""
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": auth}


def errors(status: int, *messages: str) -> Answer:
    return Answer(status, {"errors": list(messages)})


class VaultDouble(DoubleServer):
    name = "vault"

    def __init__(self, root_token: str = "root") -> None:
        super().__init__()
        self.root_token = root_token
        self.sealed = False
        self.login_delay_s = 0.0
        self.reject_next_reads = 0
        self.auth_mounts: Dict[str, str] = {"token": "token"}   # mount path -> type
        self.policies: Dict[str, str] = {}                      # name -> HCL text
        self.users: Dict[str, Dict[str, Any]] = {}              # name -> password, policies
        self.tokens: Dict[str, Dict[str, Any]] = {}             # token -> policies, username
        self.kv: Dict[str, Dict[str, Any]] = {}                 # path under secret/ -> data, version
        self.add_route("GET|HEAD", r"/v1/sys/health", "health", self._health)
        self.add_route("POST|PUT", r"/v1/auth/(?P<mount>[^/]+)/login/(?P<user>[^/]+)", "login", self._login)
        self.add_route("GET", r"/v1/auth/token/lookup-self", "lookup_self", self._lookup_self)
        self.add_route("POST|PUT", r"/v1/auth/token/revoke-self", "revoke_self", self._revoke_self)
        self.add_route("POST|PUT", r"/v1/auth/(?P<mount>[^/]+)/users/(?P<user>[^/]+)", "write_user", self._write_user)
        self.add_route("POST|PUT", r"/v1/sys/auth/(?P<mount>[^/]+)", "enable_auth", self._enable_auth)
        self.add_route("POST|PUT", r"/v1/sys/policies/acl/(?P<name>[^/]+)", "write_policy", self._write_policy)
        self.add_route("GET", r"/v1/secret/data/(?P<path>.+)", "read", self._read)
        self.add_route("POST|PUT", r"/v1/secret/data/(?P<path>.+)", "write", self._write)

    # ---- counters the tests read ----------------------------------------------------
    @property
    def logins(self) -> int:
        return self.count("login")

    @property
    def reads(self) -> int:
        return self.count("read")

    # ---- seeding without HTTP -------------------------------------------------------
    def enable_userpass(self, mount: str = "userpass") -> None:
        with self.lock:
            self.auth_mounts[mount] = "userpass"

    def add_policy(self, name: str, text: str) -> None:
        with self.lock:
            self.policies[name] = text

    def add_user(self, name: str, password: str, policies: List[str]) -> None:
        with self.lock:
            self.users[name.lower()] = {"password": password, "policies": list(policies)}

    def put_secret(self, path: str, data: Dict[str, Any]) -> None:
        """`path` as in the API after /v1/, e.g. "secret/data/demoapp"."""
        key = path.split("secret/data/", 1)[-1]
        with self.lock:
            version = self.kv.get(key, {}).get("version", 0) + 1
            self.kv[key] = {"data": dict(data), "version": version, "created": _now_rfc3339()}

    def seed_demo(self, password: str = "test123", flipt_host: str = "http://127.0.0.1:8100",
                  flipt_token: str = "flipt-token", username: str = "demoapp") -> None:
        """What `demo_app.py setup` leaves behind, without going through HTTP."""
        self.enable_userpass()
        self.add_policy("demoapp", 'path "secret/data/demoapp" {\n  capabilities = ["read"]\n}\n')
        self.add_user(username, password, ["demoapp"])
        self.put_secret("secret/data/demoapp", {"flipt_api_host": flipt_host, "flipt_api_token": flipt_token})

    # ---- shape of errors, sealing ---------------------------------------------------
    def error_answer(self, status: int, message: str) -> Answer:
        if status == 405:
            return errors(405, "unsupported operation")
        if status == 400:  # the only 400 the base class makes is for a body that is not JSON
            return errors(400, f"failed to decode JSON input: {message}")
        if status == 404 and not message:
            return errors(404)
        return errors(status, message or "internal error")

    def before(self, call: Call) -> None:
        if self.sealed and call.route != "health":
            raise errors(503, "Vault is sealed")

    # ---- tokens and policies --------------------------------------------------------
    def _token_info(self, call: Call) -> Dict[str, Any]:
        token = call.headers.get("x-vault-token") or ""
        if not token and call.headers.get("authorization", "").startswith("Bearer "):
            token = call.headers["authorization"][len("Bearer "):]
        if token and token == self.root_token:
            return {"policies": ["root"], "username": "", "token": token}
        with self.lock:
            info = self.tokens.get(token)
        if not token or info is None:
            raise errors(403, DENIED)
        return dict(info, token=token)

    def _require(self, call: Call, path: str, capability: str) -> Dict[str, Any]:
        info = self._token_info(call)
        if "root" in info["policies"] or capability in self._capabilities(info["policies"], path):
            return info
        raise errors(403, ACL_DENIED)

    def _capabilities(self, policy_names: List[str], path: str) -> List[str]:
        """Capabilities the named policies grant on `path` (exact paths and `prefix*`)."""
        granted: List[str] = []
        with self.lock:
            texts = [self.policies.get(name, "") for name in policy_names]
        for text in texts:
            for rule_path, caps in POLICY_RULE.findall(text):
                if rule_path == path or (rule_path.endswith("*") and path.startswith(rule_path[:-1])):
                    granted += re.findall(r'"([^"]+)"', caps)
        return granted

    # ---- routes ---------------------------------------------------------------------
    def _health(self, call: Call) -> Answer:
        body = {"initialized": True, "sealed": self.sealed, "standby": self.sealed,
                "replication_performance_mode": "disabled", "replication_dr_mode": "disabled",
                "server_time_utc": int(time.time()), "version": "2.7.2-double", "cluster_name": "vault-double"}
        return Answer(503 if self.sealed else 200, body)

    def _login(self, call: Call) -> Answer:
        mount, username = call.params["mount"], call.params["user"].lower()
        if self.auth_mounts.get(mount) != "userpass":
            raise errors(403, DENIED)
        password = call.json().get("password")
        if not password:
            raise errors(500, "missing password")
        if self.login_delay_s:
            self._stopping.wait(self.login_delay_s)  # bcrypt's cost on a real server
        with self.lock:
            user = self.users.get(username)
        if user is None or user["password"] != password:
            raise errors(400, "invalid username or password")
        token = "s." + secrets.token_urlsafe(18)
        with self.lock:
            self.tokens[token] = {"policies": ["default"] + user["policies"], "username": username}
        auth = {"client_token": token, "accessor": secrets.token_urlsafe(18),
                "policies": ["default"] + user["policies"], "token_policies": ["default"] + user["policies"],
                "metadata": {"username": username}, "lease_duration": DEFAULT_TTL_S, "renewable": True,
                "entity_id": str(uuid.uuid4()), "token_type": "service", "orphan": True,
                "mfa_requirement": None, "num_uses": 0}
        return Answer(200, envelope(auth=auth))

    def _lookup_self(self, call: Call) -> Answer:
        info = self._token_info(call)
        data = {"id": info["token"], "policies": info["policies"], "ttl": DEFAULT_TTL_S,
                "display_name": f"userpass-{info['username']}" if info["username"] else "root",
                "meta": {"username": info["username"]} if info["username"] else None, "type": "service"}
        return Answer(200, envelope(data=data))

    def _revoke_self(self, call: Call) -> Answer:
        info = self._token_info(call)
        with self.lock:
            self.tokens.pop(info["token"], None)
        return Answer(204)

    def _enable_auth(self, call: Call) -> Answer:
        self._require(call, f"sys/auth/{call.params['mount']}", "sudo")
        mount, kind = call.params["mount"], call.json().get("type")
        if mount in self.auth_mounts:
            raise errors(400, f"path is already in use at {mount}/")
        if kind != "userpass":
            raise errors(400, f"plugin not found in the catalog: {kind}")
        self.enable_userpass(mount)
        return Answer(204)

    def _write_policy(self, call: Call) -> Answer:
        self._require(call, f"sys/policies/acl/{call.params['name']}", "update")
        text = call.json().get("policy")
        if not isinstance(text, str) or not text.strip():
            raise errors(400, "'policy' parameter not supplied or empty")
        self.add_policy(call.params["name"], text)
        return Answer(204)

    def _write_user(self, call: Call) -> Answer:
        mount, username = call.params["mount"], call.params["user"].lower()
        self._require(call, f"auth/{mount}/users/{username}", "update")
        if self.auth_mounts.get(mount) != "userpass":
            raise errors(404, f'no handler for route "auth/{mount}/users/{username}". route entry not found.')
        body = call.json()
        policies = body.get("token_policies", [])
        if isinstance(policies, str):
            policies = [p.strip() for p in policies.split(",") if p.strip()]
        with self.lock:
            existing = self.users.get(username)
        password = body.get("password") or (existing or {}).get("password")
        if not password:
            raise errors(400, "missing password")
        self.add_user(username, password, policies)
        return Answer(204)

    def _read(self, call: Call) -> Answer:
        path = call.params["path"]
        with self.lock:
            reject = self.reject_next_reads > 0
            self.reject_next_reads -= 1 if reject else 0
        if reject:
            raise errors(403, DENIED)
        self._require(call, f"secret/data/{path}", "read")
        with self.lock:
            entry = self.kv.get(path)
        if entry is None:
            raise errors(404)
        metadata = {"created_time": entry["created"], "custom_metadata": None, "deletion_time": "",
                    "destroyed": False, "version": entry["version"]}
        return Answer(200, envelope(data={"data": entry["data"], "metadata": metadata}))

    def _write(self, call: Call) -> Answer:
        path = call.params["path"]
        self._require(call, f"secret/data/{path}", "create")
        data = call.json().get("data")
        if not isinstance(data, dict):
            raise errors(400, "no data provided")
        self.put_secret(f"secret/data/{path}", data)
        with self.lock:
            entry = self.kv[path]
        return Answer(200, envelope(data={"created_time": entry["created"], "custom_metadata": None,
                                          "deletion_time": "", "destroyed": False, "version": entry["version"]}))


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def main(argv: Optional[List[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a Vault double on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--root-token", default="root")
    parser.add_argument("--login-delay", type=float, default=0.0, help="seconds each login takes (real: ~0.08)")
    args = parser.parse_args(argv)
    vault = VaultDouble(root_token=args.root_token)
    vault.login_delay_s = args.login_delay
    vault.serve_forever_in_foreground(args.port)


if __name__ == "__main__":
    main()
