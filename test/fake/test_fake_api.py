#!/usr/bin/env python3
"""Test suite of test/fake-anthropic-api (standard library only).

Run: python3 test/fake/test_fake_api.py [-v] [TestClass[.test_name] ...]
The last line printed is "N passed, N failed[, N skipped]"; the exit status is
non-zero when anything failed.  Every server is started as a subprocess with
--port 0 and driven over real HTTP on 127.0.0.1.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "fake-anthropic-api")
API_KEY = "sk-ant-fake-test-key"
ENV_KEY = "env-key-for-tests"
BETA = "managed-agents-2026-04-01"
REQ_ID_RE = re.compile(r"^req_[0-9A-Za-z]{24}$")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
WIRE_412 = (b'{"type":"error","error":{"type":"invalid_request_error","message":"Heartbeat precondition '
            b'failed: expected hb-1, actual was NULL","details":{"error_code":"heartbeat_precondition_failed",'
            b'"current_state":{"state":"queued","last_heartbeat":null,"lease_extended":false,"ttl_seconds":120}}}}')


class FakeServer:
    def __init__(self, *extra):
        self.proc = subprocess.Popen([sys.executable, SERVER, "--port", "0", "--quiet"] + list(extra),
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(15)
        if not line or not line[0]:
            self.proc.kill()
            raise RuntimeError("fake server did not start")
        self.line = line[0].decode().rstrip("\n")
        m = re.fullmatch(r"listening on (https?)://127\.0\.0\.1:(\d+)", self.line)
        if not m:
            self.proc.kill()
            raise RuntimeError("unexpected first line: %r" % self.line)
        self.scheme = m.group(1)
        self.port = int(m.group(2))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class Resp:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "Resp(%d, %r)" % (self.status, self.raw[:300])


class Client:
    """One keep-alive http.client connection with API default headers."""

    def __init__(self, port, ssl_context=None, auth="x-api-key", key=API_KEY, version="2023-06-01"):
        if ssl_context is not None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=ssl_context)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        self.defaults = {"anthropic-version": version, "anthropic-beta": BETA}
        if auth == "x-api-key":
            self.defaults["x-api-key"] = key
        elif auth == "bearer":
            self.defaults["authorization"] = "Bearer " + key

    def req(self, method, path, body=None, headers=None, raw=None):
        h = dict(self.defaults)
        for k, v in (headers or {}).items():
            if v is None:
                h.pop(k, None)
            else:
                h[k] = v
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["content-type"] = "application/json"
        if method == "POST" and data is None:
            data = b""
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        raw_body = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, raw_body)

    def close(self):
        self.conn.close()


SRV = None


def setUpModule():
    global SRV
    SRV = FakeServer("--environment-key", ENV_KEY)


def tearDownModule():
    if SRV is not None:
        SRV.stop()


class Base(unittest.TestCase):
    def setUp(self):
        self.ctl = Client(SRV.port, auth=None)
        self.assertEqual(self.fake("POST", "/_fake/reset").status, 200)
        self.c = Client(SRV.port)

    def tearDown(self):
        self.c.close()
        self.ctl.close()

    def fake(self, method, path, body=None):
        return self.ctl.req(method, path, body=body, headers={"anthropic-version": None, "anthropic-beta": None})

    def create(self, body=None, **kw):
        body = body if body is not None else {"name": "env-test", **kw}
        r = self.c.req("POST", "/v1/environments", body)
        self.assertEqual(r.status, 200, r)
        return r.json

    def enqueue(self, env_id, body=None):
        r = self.fake("POST", "/_fake/environments/%s/work" % env_id, body or {})
        self.assertEqual(r.status, 200, r)
        return r.json

    def assertError(self, r, status, etype, code=None):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers.get("content-type"), "application/json")
        body = r.json
        self.assertIsInstance(body, dict, r)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], etype, r)
        self.assertIsInstance(body["error"]["message"], str)
        if status != 412:
            self.assertEqual(body["request_id"], r.headers["request-id"])
        if code is not None:
            self.assertEqual(body["error"]["details"]["error_code"], code, r)
        return body

    def list_all(self, path, limit, client=None):
        client = client or self.c
        ids, pages, page = [], 0, None
        while True:
            sep = "&" if "?" in path else "?"
            url = "%s%slimit=%d" % (path, sep, limit)
            if page:
                url += "&page=" + quote(page, safe="")
            r = client.req("GET", url)
            self.assertEqual(r.status, 200, r)
            self.assertLessEqual(len(r.json["data"]), limit)
            ids += [e["id"] for e in r.json["data"]]
            pages += 1
            page = r.json["next_page"]
            if not page:
                return ids, pages


# ----------------------------------------------------------------------------


class TestEnvironments(Base):
    def test_create_defaults(self):
        e = self.create({"name": "alpha"})
        self.assertRegex(e["id"], r"^env_[0-9A-Za-z]{24}$")
        self.assertEqual(list(e), ["id", "archived_at", "config", "created_at", "description", "metadata",
                                   "name", "type", "updated_at", "scope"])
        self.assertEqual(e["type"], "environment")
        self.assertIsNone(e["archived_at"])
        self.assertIsNone(e["description"])
        self.assertEqual(e["metadata"], {})
        self.assertEqual(e["scope"], "organization")
        self.assertEqual(e["config"], {"networking": {"type": "unrestricted"},
                                       "packages": {"apt": [], "cargo": [], "gem": [], "go": [], "npm": [],
                                                    "pip": [], "type": "packages"}, "type": "cloud"})
        self.assertRegex(e["created_at"], TS_RE)
        self.assertEqual(e["created_at"], e["updated_at"])
        g = self.c.req("GET", "/v1/environments/" + e["id"])
        self.assertEqual(g.status, 200)
        self.assertEqual(g.json, e)

    def test_create_full(self):
        body = {"name": "py", "description": "d", "metadata": {"team": "x", "gone": ""}, "scope": "account",
                "config": {"type": "cloud",
                           "networking": {"type": "limited", "allowed_hosts": ["api.example.com"],
                                          "allow_package_managers": True},
                           "packages": {"pip": ["pandas", "numpy"], "apt": None}}}
        e = self.create(body)
        self.assertEqual(e["description"], "d")
        self.assertEqual(e["metadata"], {"team": "x"})
        self.assertEqual(e["scope"], "account")
        self.assertEqual(e["config"]["networking"], {"allow_mcp_servers": False, "allow_package_managers": True,
                                                     "allowed_hosts": ["api.example.com"], "type": "limited"})
        self.assertEqual(e["config"]["packages"]["pip"], ["pandas", "numpy"])
        self.assertEqual(e["config"]["packages"]["apt"], [])
        self.assertEqual(e["config"]["packages"]["type"], "packages")
        sh = self.create({"name": "sh", "config": {"type": "self_hosted"}})
        self.assertEqual(sh["config"], {"type": "self_hosted"})

    def test_create_validation(self):
        cases = [
            {},
            {"name": ""},
            {"name": 5},
            {"name": "x", "bogus": 1},
            {"name": "x", "config": "cloud"},
            {"name": "x", "config": {}},
            {"name": "x", "config": {"type": "docker"}},
            {"name": "x", "config": {"type": "self_hosted", "networking": {"type": "unrestricted"}}},
            {"name": "x", "config": {"type": "cloud", "networking": {"type": "open"}}},
            {"name": "x", "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": "a"}}},
            {"name": "x", "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": [1]}}},
            {"name": "x", "config": {"type": "cloud", "networking": {"type": "limited", "allow_mcp_servers": "yes"}}},
            {"name": "x", "config": {"type": "cloud", "networking": {"type": "unrestricted", "allowed_hosts": []}}},
            {"name": "x", "config": {"type": "cloud", "packages": {"pip": "numpy"}}},
            {"name": "x", "config": {"type": "cloud", "packages": {"type": "pkgs"}}},
            {"name": "x", "config": {"type": "cloud", "packages": {"brew": []}}},
            {"name": "x", "config": {"type": "cloud", "extra": 1}},
            {"name": "x", "scope": "world"},
            {"name": "x", "description": 7},
        ]
        for body in cases:
            with self.subTest(body=body):
                self.assertError(self.c.req("POST", "/v1/environments", body), 400, "invalid_request_error")
        for meta in ({"a": 1}, {"a": None}, "x", [1], {"": "v"}, {"k" * 65: "v"}, {"k": "v" * 513},
                     {"k%d" % i: "v" for i in range(17)}):
            with self.subTest(meta=meta):
                self.assertError(self.c.req("POST", "/v1/environments", {"name": "x", "metadata": meta}),
                                 400, "invalid_request_error", "invalid_metadata")
        r = self.c.req("POST", "/v1/environments", raw=b'{"name": ', headers={"content-type": "application/json"})
        self.assertError(r, 400, "invalid_request_error")
        r = self.c.req("POST", "/v1/environments", raw=b'[1,2]', headers={"content-type": "application/json"})
        self.assertError(r, 400, "invalid_request_error")
        # nothing was created
        self.assertEqual(self.c.req("GET", "/v1/environments").json["data"], [])

    def test_get_unknown(self):
        self.assertError(self.c.req("GET", "/v1/environments/env_nope"), 404, "not_found_error",
                         "environment_not_found")
        # percent-encoded path parameters are decoded
        e = self.create()
        r = self.c.req("GET", "/v1/environments/" + e["id"].replace("_", "%5F"))
        self.assertEqual(r.status, 200)

    def test_update_merge(self):
        e = self.create({"name": "a", "description": "d", "metadata": {"a": "1", "b": "2", "c": "3"}})
        r = self.c.req("POST", "/v1/environments/" + e["id"],
                       {"metadata": {"a": None, "b": "", "d": "4"}, "description": None})
        self.assertEqual(r.status, 200, r)
        u = r.json
        self.assertEqual(u["metadata"], {"c": "3", "d": "4"})
        self.assertIsNone(u["description"])
        self.assertEqual(u["name"], "a")
        self.assertEqual(u["created_at"], e["created_at"])
        self.assertGreater(u["updated_at"], e["updated_at"])
        self.assertEqual(u["config"], e["config"])
        u2 = self.c.req("POST", "/v1/environments/" + e["id"], {"name": "b", "scope": "account"}).json
        self.assertEqual((u2["name"], u2["scope"], u2["metadata"]), ("b", "account", {"c": "3", "d": "4"}))
        self.assertGreater(u2["updated_at"], u["updated_at"])
        u3 = self.c.req("POST", "/v1/environments/" + e["id"], {}).json
        self.assertEqual(u3["name"], "b")
        self.assertEqual(self.c.req("GET", "/v1/environments/" + e["id"]).json, u3)
        for body in ({"bogus": 1}, {"name": ""}, {"metadata": {"x": 5}}, {"scope": "x"}):
            with self.subTest(body=body):
                self.assertEqual(self.c.req("POST", "/v1/environments/" + e["id"], body).status, 400)
        self.assertError(self.c.req("POST", "/v1/environments/" + e["id"], {"metadata": {"x": 5}}), 400,
                         "invalid_request_error", "invalid_metadata")
        self.assertError(self.c.req("POST", "/v1/environments/env_nope", {}), 404, "not_found_error",
                         "environment_not_found")

    def test_update_config_merge(self):
        e = self.create({"name": "a", "config": {"type": "cloud",
                                                 "networking": {"type": "limited", "allowed_hosts": ["a.com"],
                                                                "allow_mcp_servers": True},
                                                 "packages": {"pip": ["x"], "npm": ["y"]}}})
        u = self.c.req("POST", "/v1/environments/" + e["id"],
                       {"config": {"type": "cloud", "networking": {"type": "limited", "allow_package_managers": True},
                                   "packages": {"pip": ["z"]}}}).json
        self.assertEqual(u["config"]["networking"], {"allow_mcp_servers": True, "allow_package_managers": True,
                                                     "allowed_hosts": ["a.com"], "type": "limited"})
        self.assertEqual(u["config"]["packages"]["pip"], ["z"])
        self.assertEqual(u["config"]["packages"]["npm"], ["y"])
        u = self.c.req("POST", "/v1/environments/" + e["id"], {"config": {"type": "cloud"}}).json
        self.assertEqual(u["config"]["networking"]["allowed_hosts"], ["a.com"])
        u = self.c.req("POST", "/v1/environments/" + e["id"],
                       {"config": {"type": "cloud", "networking": {"type": "unrestricted"}}}).json
        self.assertEqual(u["config"]["networking"], {"type": "unrestricted"})

    def test_config_type_change(self):
        e = self.create({"name": "a"})
        r = self.c.req("POST", "/v1/environments/" + e["id"], {"config": {"type": "self_hosted"}})
        self.assertError(r, 400, "invalid_request_error", "invalid_config_type_change")
        s = self.create({"name": "s", "config": {"type": "self_hosted"}})
        r = self.c.req("POST", "/v1/environments/" + s["id"], {"config": {"type": "cloud"}})
        self.assertError(r, 400, "invalid_request_error", "invalid_config_type_change")
        self.assertEqual(self.c.req("GET", "/v1/environments/" + e["id"]).json, e)

    def test_archive_and_delete(self):
        e = self.create()
        r = self.c.req("POST", "/v1/environments/%s/archive" % e["id"])
        self.assertEqual(r.status, 200, r)
        self.assertRegex(r.json["archived_at"], TS_RE)
        self.assertError(self.c.req("POST", "/v1/environments/" + e["id"], {"name": "n"}), 400,
                         "invalid_request_error", "environment_archived")
        self.assertError(self.c.req("POST", "/v1/environments/%s/archive" % e["id"]), 400,
                         "invalid_request_error", "environment_archived")
        self.assertEqual(self.c.req("GET", "/v1/environments/" + e["id"]).json["archived_at"], r.json["archived_at"])
        d = self.c.req("DELETE", "/v1/environments/" + e["id"])
        self.assertEqual(d.status, 200)
        self.assertEqual(d.json, {"id": e["id"], "type": "environment_deleted"})
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/archive")):
            self.assertError(self.c.req(method, "/v1/environments/" + e["id"] + path), 404, "not_found_error",
                             "environment_not_found")
        self.assertError(self.c.req("POST", "/v1/environments/env_nope/archive"), 404, "not_found_error",
                         "environment_not_found")

    def test_raw_reappear(self):
        e = self.create()
        self.c.req("DELETE", "/v1/environments/" + e["id"])
        raw = dict(e, name="resurrected", extra_field={"x": 1})
        r = self.fake("POST", "/_fake/environments/raw", raw)
        self.assertEqual(r.status, 200)
        g = self.c.req("GET", "/v1/environments/" + e["id"])
        self.assertEqual(g.json, raw)
        self.assertEqual([x["id"] for x in self.c.req("GET", "/v1/environments").json["data"]], [e["id"]])
        self.assertEqual(self.fake("POST", "/_fake/environments/raw", {"name": "no id"}).status, 400)


class TestPagination(Base):
    def test_every_item_once(self):
        r = self.fake("POST", "/_fake/environments/bulk", {"count": 95, "name_prefix": "p-"})
        self.assertEqual(r.json["count"], 95)
        created = r.json["ids"]
        self.assertEqual(len(set(created)), 95)
        ids, pages = self.list_all("/v1/environments", 10)
        self.assertEqual(pages, 10)
        self.assertEqual(ids, list(reversed(created)))  # newest first
        ids, pages = self.list_all("/v1/environments", 95)
        self.assertEqual(pages, 1)  # look-ahead: no empty last page
        ids, pages = self.list_all("/v1/environments", 1000)
        self.assertEqual((len(ids), pages), (95, 1))
        first = self.c.req("GET", "/v1/environments").json
        self.assertEqual(len(first["data"]), 20)
        self.assertEqual(first["data"][0]["name"], "p-95")

    def test_stable_under_changes(self):
        created = self.fake("POST", "/_fake/environments/bulk", {"count": 30}).json["ids"]
        seen, page = [], None
        while True:
            url = "/v1/environments?limit=7" + ("&page=" + quote(page, safe="") if page else "")
            r = self.c.req("GET", url).json
            seen += [e["id"] for e in r["data"]]
            self.create({"name": "new"})  # inserted meanwhile: never appears in later pages
            if created[0] not in seen:  # the oldest, not reached yet: deleted meanwhile
                self.c.req("DELETE", "/v1/environments/" + created[0])
            page = r["next_page"]
            if not page:
                break
        self.assertEqual(len(seen), len(set(seen)))
        self.assertTrue(set(seen) <= set(created))

    def test_limit_bounds_and_cursor(self):
        self.fake("POST", "/_fake/environments/bulk", {"count": 3})
        for lim in ("0", "1001", "-1", "x", "1.5", ""):
            with self.subTest(limit=lim):
                self.assertError(self.c.req("GET", "/v1/environments?limit=" + lim), 400, "invalid_request_error")
        self.assertEqual(len(self.c.req("GET", "/v1/environments?limit=1").json["data"]), 1)
        self.assertEqual(self.c.req("GET", "/v1/environments?limit=1000").status, 200)
        for cur in ("garbage", "page_", "page_AAAA", "page_MjAyNS0wNS0xNFQwMDowMDowMFo%3D"):
            with self.subTest(cursor=cur):
                self.assertError(self.c.req("GET", "/v1/environments?page=" + cur), 400, "invalid_request_error")
        nxt = self.c.req("GET", "/v1/environments?limit=1").json["next_page"]
        self.assertTrue(nxt.startswith("page_"))
        # a tampered cursor is refused
        tampered = nxt[:-4] + ("AAA=" if nxt[-4:] != "AAA=" else "BBB=")
        self.assertEqual(self.c.req("GET", "/v1/environments?page=" + quote(tampered)).status, 400)
        # an environment cursor is not a work cursor
        env = self.create({"name": "w", "config": {"type": "self_hosted"}})
        r = self.c.req("GET", "/v1/environments/%s/work?page=%s" % (env["id"], quote(nxt, safe="")))
        self.assertError(r, 400, "invalid_request_error")

    def test_include_archived(self):
        ids = self.fake("POST", "/_fake/environments/bulk", {"count": 10, "archived": 3}).json["ids"]
        visible, _ = self.list_all("/v1/environments", 4)
        self.assertEqual(set(visible), set(ids[3:]))
        allids, _ = self.list_all("/v1/environments?include_archived=true", 4)
        self.assertEqual(set(allids), set(ids))
        vis2, _ = self.list_all("/v1/environments?include_archived=false", 3)
        self.assertEqual(vis2, visible)
        self.assertEqual(self.c.req("GET", "/v1/environments?include_archived=maybe").status, 400)
        self.c.req("POST", "/v1/environments/%s/archive" % ids[9])
        self.assertNotIn(ids[9], self.list_all("/v1/environments", 100)[0])

    def test_bulk_50000(self):
        t0 = time.monotonic()
        r = self.fake("POST", "/_fake/environments/bulk", {"count": 50000, "config": {"type": "self_hosted"}})
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertEqual(r.json, {"count": 50000})
        ids, pages = self.list_all("/v1/environments", 1000)
        self.assertEqual(pages, 50)
        self.assertEqual(len(set(ids)), 50000)


class TestAuthAndHeaders(Base):
    def test_key_forms(self):
        self.assertEqual(self.c.req("GET", "/v1/environments").status, 200)
        b = Client(SRV.port, auth="bearer", version="2026-10-21")
        self.assertEqual(b.req("GET", "/v1/environments").status, 200)
        b.close()
        for hdrs in ({"x-api-key": "wrong"}, {"x-api-key": None}, {"x-api-key": None, "authorization": "Bearer nope"},
                     {"x-api-key": None, "authorization": "Basic " + API_KEY},
                     {"x-api-key": None, "authorization": "Bearer " + ENV_KEY},
                     {"x-api-key": ENV_KEY}):
            with self.subTest(h=hdrs):
                self.assertError(self.c.req("GET", "/v1/environments", headers=hdrs), 401, "authentication_error")

    def test_environment_key_scope(self):
        env = self.create({"name": "sh", "config": {"type": "self_hosted"}})
        eid = env["id"]
        w = self.enqueue(eid)
        k = Client(SRV.port, auth="bearer", key=ENV_KEY)
        try:
            r = k.req("GET", "/v1/environments/%s/work/poll" % eid)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json["id"], w["id"])
            self.assertEqual(k.req("GET", "/v1/environments/%s/work" % eid).status, 200)
            self.assertEqual(k.req("POST", "/v1/environments/%s/work/%s/ack" % (eid, w["id"])).status, 200)
            r = k.req("POST", "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=NO_HEARTBEAT" % (eid, w["id"]))
            self.assertEqual(r.status, 200, r)
            self.assertEqual(k.req("POST", "/v1/environments/%s/work/%s/stop" % (eid, w["id"]), {}).status, 200)
            for method, path in (("GET", "/v1/environments"), ("GET", "/v1/environments/" + eid),
                                 ("POST", "/v1/environments"), ("POST", "/v1/environments/%s/archive" % eid),
                                 ("GET", "/v1/environments/%s/work/%s" % (eid, w["id"])),
                                 ("POST", "/v1/environments/%s/work/%s" % (eid, w["id"])),
                                 ("GET", "/v1/environments/%s/work/stats" % eid),
                                 ("DELETE", "/v1/environments/" + eid)):
                with self.subTest(path=path, method=method):
                    self.assertError(k.req(method, path, {} if method == "POST" else None), 401,
                                     "authentication_error")
        finally:
            k.close()
        # the API key works on the work endpoints too
        self.assertEqual(self.c.req("GET", "/v1/environments/%s/work/poll" % eid).status, 200)

    def test_per_environment_key(self):
        a = self.create({"name": "a", "config": {"type": "self_hosted"}})["id"]
        b = self.create({"name": "b", "config": {"type": "self_hosted"}})["id"]
        self.assertError(self.fake("POST", "/_fake/environments/env_nope/key", {"key": "k-a"}), 404,
                         "not_found_error")
        for bad_key in ("", 5, ["x"]):
            with self.subTest(key=bad_key):
                self.assertError(self.fake("POST", "/_fake/environments/%s/key" % a, {"key": bad_key}), 400,
                                 "invalid_request_error")
        self.assertEqual(self.fake("POST", "/_fake/environments/%s/key" % a, {"key": "key-of-a-123"}).status, 200)
        wa = self.enqueue(a)
        wb = self.enqueue(b)
        ka = Client(SRV.port, auth="bearer", key="key-of-a-123")
        kenv = Client(SRV.port, auth="bearer", key=ENV_KEY)
        try:
            # the API key, the global environment key and x-api-key forms no longer open a's queue
            for client in (self.c, kenv, Client(SRV.port, key="key-of-a-123")):
                for method, path in (("GET", "/work/poll"), ("GET", "/work"),
                                     ("POST", "/work/%s/ack" % wa["id"]),
                                     ("POST", "/work/%s/heartbeat" % wa["id"]),
                                     ("POST", "/work/%s/stop" % wa["id"])):
                    with self.subTest(path=path, client=client.defaults):
                        self.assertError(client.req(method, "/v1/environments/" + a + path,
                                                    {} if path.endswith("stop") else None),
                                         401, "authentication_error")
            # a's key opens a's queue only
            p = ka.req("GET", "/v1/environments/%s/work/poll" % a)
            self.assertEqual(p.json["id"], wa["id"])
            self.assertEqual(ka.req("GET", "/v1/environments/%s/work" % a).status, 200)
            self.assertEqual(ka.req("POST", "/v1/environments/%s/work/%s/ack" % (a, wa["id"])).status, 200)
            self.assertError(ka.req("GET", "/v1/environments/%s/work/poll" % b), 401, "authentication_error")
            self.assertError(ka.req("GET", "/v1/environments/" + a), 401, "authentication_error")
            # b without a key of its own keeps the old rules
            self.assertEqual(kenv.req("GET", "/v1/environments/%s/work/poll" % b).json["id"], wb["id"])
            # get, update and stats of a still take the API key
            self.assertEqual(self.c.req("GET", "/v1/environments/%s/work/stats" % a).status, 200)
            self.assertEqual(self.c.req("GET", "/v1/environments/%s/work/%s" % (a, wa["id"])).status, 200)
            # the item's sessions token still works on heartbeat and stop
            secret = json.loads(base64.urlsafe_b64decode(p.json["secret"] + "=" * (-len(p.json["secret"]) % 4)))
            t = Client(SRV.port, auth="bearer", key=secret["sessions_token"])
            try:
                r = t.req("POST", "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=NO_HEARTBEAT"
                          % (a, wa["id"]))
                self.assertEqual(r.status, 200, r)
                self.assertError(t.req("GET", "/v1/environments/%s/work/poll" % a), 401, "authentication_error")
            finally:
                t.close()
            # taking the key away restores the API key; reset forgets keys
            self.assertEqual(self.fake("POST", "/_fake/environments/%s/key" % a, {"key": None}).status, 200)
            self.assertEqual(self.c.req("GET", "/v1/environments/%s/work" % a).status, 200)
            self.fake("POST", "/_fake/environments/%s/key" % a, {"key": "key-of-a-123"})
            self.fake("POST", "/_fake/reset")
            a2 = self.create({"name": "a", "config": {"type": "self_hosted"}})["id"]
            self.assertEqual(self.c.req("GET", "/v1/environments/%s/work" % a2).status, 200)
        finally:
            ka.close()
            kenv.close()

    def test_sessions_token(self):
        eid = self.create({"name": "sh", "config": {"type": "self_hosted"}})["id"]
        w1 = self.enqueue(eid)
        w2 = self.enqueue(eid)
        p = self.c.req("GET", "/v1/environments/%s/work/poll" % eid).json
        self.assertEqual(p["id"], w1["id"])
        secret = json.loads(base64.urlsafe_b64decode(p["secret"] + "=" * (-len(p["secret"]) % 4)))
        token = secret["sessions_token"]
        self.assertTrue(token.startswith("sk-ant-req-"))
        self.assertEqual(secret["api_base_url"], "http://127.0.0.1:%d" % SRV.port)
        self.c.req("POST", "/v1/environments/%s/work/%s/ack" % (eid, w1["id"]))
        self.c.req("POST", "/v1/environments/%s/work/%s/ack" % (eid, w2["id"]))
        t = Client(SRV.port, auth="bearer", key=token)
        try:
            hb = t.req("POST", "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=NO_HEARTBEAT" % (eid, w1["id"]))
            self.assertEqual(hb.status, 200, hb)
            # not for another item, nor for other endpoints
            self.assertError(t.req("POST", "/v1/environments/%s/work/%s/heartbeat" % (eid, w2["id"])), 401,
                             "authentication_error")
            self.assertError(t.req("GET", "/v1/environments/%s/work/poll" % eid), 401, "authentication_error")
            self.assertError(t.req("POST", "/v1/environments/%s/work/%s/ack" % (eid, w1["id"])), 401,
                             "authentication_error")
            self.assertError(t.req("GET", "/v1/environments/%s/work/%s" % (eid, w1["id"])), 401, "authentication_error")
            self.assertEqual(t.req("POST", "/v1/environments/%s/work/%s/stop" % (eid, w1["id"]),
                                   {"force": True}).json["state"], "stopped")
        finally:
            t.close()

    def test_version_and_beta(self):
        self.assertError(self.c.req("GET", "/v1/environments", headers={"anthropic-version": None}), 400,
                         "invalid_request_error")
        self.assertError(self.c.req("GET", "/v1/environments", headers={"anthropic-version": "2024-01-01"}), 400,
                         "invalid_request_error")
        self.assertEqual(self.c.req("GET", "/v1/environments", headers={"anthropic-version": "2026-10-21"}).status, 200)
        self.assertError(self.c.req("GET", "/v1/environments", headers={"anthropic-beta": None}), 400,
                         "invalid_request_error")
        self.assertError(self.c.req("GET", "/v1/environments", headers={"anthropic-beta": "foo-2025-01-01"}), 400,
                         "invalid_request_error")
        self.assertError(self.c.req("GET", "/v1/environments",
                                    headers={"anthropic-beta": "managed-agents-2026-04-01x"}), 400,
                         "invalid_request_error")
        self.assertEqual(self.c.req("GET", "/v1/environments",
                                    headers={"anthropic-beta": "foo-2025-01-01,managed-agents-2026-04-01"}).status, 200)
        self.assertEqual(self.c.req("GET", "/v1/environments?beta=true").status, 200)
        # auth is checked before the version
        self.assertError(self.c.req("GET", "/v1/environments", headers={"anthropic-version": None, "x-api-key": "no"}),
                         401, "authentication_error")

    def test_request_id_everywhere(self):
        seen = set()
        answers = [
            self.c.req("GET", "/v1/environments"),
            self.c.req("POST", "/v1/environments", {"name": ""}),
            self.c.req("GET", "/v1/environments", headers={"x-api-key": "bad"}),
            self.c.req("GET", "/v1/nothing-here"),
            self.c.req("PATCH", "/v1/environments/env_x", {}),
            self.c.req("GET", "/v1/environments/env_nope"),
            self.c.req("GET", "/"),
            self.fake("GET", "/_fake/stats"),
            self.fake("GET", "/_fake/nothing"),
            self.fake("POST", "/_fake/reset"),
        ]
        for r in answers:
            with self.subTest(r=r):
                rid = r.headers.get("request-id")
                self.assertRegex(rid, REQ_ID_RE)
                self.assertNotIn(rid, seen)
                seen.add(rid)
                self.assertEqual(r.headers.get("content-type"), "application/json")
                self.assertEqual(int(r.headers["content-length"]), len(r.raw))
                self.assertNotIn(b"\n", r.raw)
                if r.status >= 400:
                    self.assertEqual(r.json["request_id"], rid)
                    self.assertEqual(list(r.json), ["type", "error", "request_id"])
        self.assertEqual(answers[3].status, 404)
        self.assertEqual(answers[3].json["error"]["type"], "not_found_error")


class TestWork(Base):
    def setUp(self):
        super().setUp()
        self.eid = self.create({"name": "sh", "config": {"type": "self_hosted"}})["id"]
        self.base = "/v1/environments/%s/work" % self.eid

    def hb(self, wid, expected=None, ttl=None, client=None):
        q = []
        if expected is not None:
            q.append("expected_last_heartbeat=" + quote(expected, safe=""))
        if ttl is not None:
            q.append("desired_ttl_seconds=%s" % ttl)
        return (client or self.c).req("POST", "%s/%s/heartbeat%s" % (self.base, wid, "?" + "&".join(q) if q else ""))

    def stats(self):
        r = self.c.req("GET", self.base + "/stats")
        self.assertEqual(r.status, 200, r)
        return r.json

    def test_lifecycle(self):
        w = self.enqueue(self.eid, {"data": {"type": "session", "id": "sesn_abc"}, "metadata": {"k": "v"}})
        self.assertRegex(w["id"], r"^work_[0-9A-Za-z]{24}$")
        self.assertEqual(list(w), ["id", "acknowledged_at", "created_at", "data", "environment_id",
                                   "latest_heartbeat_at", "metadata", "secret", "started_at", "state",
                                   "stop_requested_at", "stopped_at", "type"])
        self.assertEqual((w["type"], w["state"], w["data"], w["metadata"], w["environment_id"]),
                         ("work", "queued", {"id": "sesn_abc", "type": "session"}, {"k": "v"}, self.eid))
        for f in ("acknowledged_at", "latest_heartbeat_at", "secret", "started_at", "stop_requested_at",
                  "stopped_at"):
            self.assertIsNone(w[f], f)
        auto = self.enqueue(self.eid)
        self.assertRegex(auto["data"]["id"], r"^sesn_[0-9A-Za-z]{24}$")
        self.c.req("POST", "%s/%s/stop" % (self.base, auto["id"]), {"force": True})
        st = self.stats()
        self.assertEqual(st, {"type": "work_queue_stats", "depth": 1, "pending": 0,
                              "oldest_queued_at": w["created_at"], "workers_polling": 0})
        p = self.c.req("GET", self.base + "/poll").json
        self.assertEqual(p["id"], w["id"])
        self.assertIsInstance(p["secret"], str)
        self.assertEqual(self.stats()["pending"], 1)
        self.assertEqual(self.stats()["depth"], 0)
        g = self.c.req("GET", "%s/%s" % (self.base, w["id"])).json
        self.assertIsNone(g["secret"])
        a = self.c.req("POST", "%s/%s/ack" % (self.base, w["id"]))
        self.assertEqual(a.status, 200, a)
        self.assertEqual(a.json["state"], "starting")
        self.assertRegex(a.json["acknowledged_at"], TS_RE)
        self.assertIsNone(a.json["secret"])
        self.assertEqual(self.stats(), {"type": "work_queue_stats", "depth": 0, "pending": 0,
                                        "oldest_queued_at": None, "workers_polling": 0})
        h1 = self.hb(w["id"], "NO_HEARTBEAT")
        self.assertEqual(h1.status, 200, h1)
        self.assertEqual(list(h1.json), ["type", "last_heartbeat", "lease_extended", "state", "ttl_seconds"])
        self.assertEqual((h1.json["type"], h1.json["state"], h1.json["lease_extended"], h1.json["ttl_seconds"]),
                         ("work_heartbeat", "active", True, 120))
        self.assertRegex(h1.json["last_heartbeat"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        g = self.c.req("GET", "%s/%s" % (self.base, w["id"])).json
        self.assertEqual(g["state"], "active")
        self.assertEqual(g["latest_heartbeat_at"], h1.json["last_heartbeat"])
        self.assertEqual(g["started_at"], h1.json["last_heartbeat"])
        last = h1.json["last_heartbeat"]
        for _ in range(5):
            h = self.hb(w["id"], last, 60)
            self.assertEqual(h.status, 200, h)
            self.assertGreater(h.json["last_heartbeat"], last)
            self.assertEqual(h.json["ttl_seconds"], 60)
            last = h.json["last_heartbeat"]
        self.assertEqual(self.hb(w["id"], last).json["ttl_seconds"], 60)  # TTL is kept
        s = self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {})
        self.assertEqual(s.json["state"], "stopping")
        self.assertRegex(s.json["stop_requested_at"], TS_RE)
        self.assertIsNone(s.json["stopped_at"])
        s2 = self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {"force": False})
        self.assertEqual(s2.json, s.json)
        h = self.hb(w["id"])
        self.assertEqual((h.json["state"], h.json["lease_extended"]), ("stopping", True))
        f = self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {"force": True})
        self.assertEqual(f.json["state"], "stopped")
        self.assertEqual(f.json["stop_requested_at"], s.json["stop_requested_at"])
        self.assertRegex(f.json["stopped_at"], TS_RE)
        self.assertError(self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {"force": True}), 409,
                         "conflict_error")
        h = self.hb(w["id"])
        self.assertEqual((h.status, h.json["state"], h.json["lease_extended"]), (200, "stopped", False))
        lst = self.c.req("GET", self.base).json
        self.assertEqual({x["id"] for x in lst["data"]}, {w["id"], auto["id"]})
        self.assertTrue(all(x["secret"] is None for x in lst["data"]))
        self.assertIsNone(lst["next_page"])
        self.assertIsNone(self.c.req("GET", self.base + "/poll").json)

    def test_412_exact(self):
        w = self.enqueue(self.eid)
        r = self.hb(w["id"], "hb-1")
        self.assertEqual(r.status, 412)
        self.assertEqual(r.raw, WIRE_412)
        self.assertRegex(r.headers["request-id"], REQ_ID_RE)
        self.c.req("POST", "%s/%s/ack" % (self.base, w["id"]))
        h = self.hb(w["id"], "NO_HEARTBEAT", 30).json
        r = self.hb(w["id"], "NO_HEARTBEAT")
        self.assertEqual(r.status, 412)
        self.assertEqual(r.json, {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "Heartbeat precondition failed: expected NO_HEARTBEAT, actual was %s" % h["last_heartbeat"],
            "details": {"error_code": "heartbeat_precondition_failed",
                        "current_state": {"state": "active", "last_heartbeat": h["last_heartbeat"],
                                          "lease_extended": False, "ttl_seconds": 30}}}})
        # a re-formatted timestamp does not match
        reformatted = h["last_heartbeat"].replace("Z", "+00:00")
        self.assertEqual(self.hb(w["id"], reformatted).status, 412)
        self.assertEqual(self.hb(w["id"], h["last_heartbeat"]).status, 200)

    def test_409s(self):
        w = self.enqueue(self.eid)
        self.assertError(self.hb(w["id"], "NO_HEARTBEAT"), 409, "conflict_error")
        self.assertEqual(self.c.req("POST", "%s/%s/ack" % (self.base, w["id"])).status, 200)
        self.assertError(self.c.req("POST", "%s/%s/ack" % (self.base, w["id"])), 409, "conflict_error")
        # graceful stop of a queued item stops it at once
        q = self.enqueue(self.eid)
        s = self.c.req("POST", "%s/%s/stop" % (self.base, q["id"]), {})
        self.assertEqual(s.json["state"], "stopped")
        self.assertError(self.c.req("POST", "%s/%s/stop" % (self.base, q["id"]), {}), 409, "conflict_error")
        self.assertError(self.c.req("POST", "%s/%s/ack" % (self.base, q["id"])), 409, "conflict_error")
        self.assertEqual(self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {"force": "yes"}).status, 400)
        self.assertEqual(self.c.req("POST", "%s/%s/stop" % (self.base, w["id"]), {"hard": True}).status, 400)

    def test_not_found(self):
        self.assertError(self.c.req("GET", "%s/work_nope" % self.base), 404, "not_found_error", "work_not_found")
        for suffix in ("/ack", "/heartbeat", "/stop"):
            self.assertError(self.c.req("POST", "%s/work_nope%s" % (self.base, suffix), {}), 404, "not_found_error",
                             "work_not_found")
        for path in ("/v1/environments/env_nope/work/poll", "/v1/environments/env_nope/work",
                     "/v1/environments/env_nope/work/stats"):
            self.assertError(self.c.req("GET", path), 404, "not_found_error", "environment_not_found")
        self.assertEqual(self.fake("POST", "/_fake/environments/env_nope/work", {}).status, 404)

    def test_reclaim(self):
        w = self.enqueue(self.eid)
        p1 = self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=200").json
        self.assertEqual(p1["id"], w["id"])
        self.assertIsNone(self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=200").json)
        self.assertIsNone(self.c.req("GET", self.base + "/poll").json)  # default 5000 ms
        time.sleep(0.25)
        p2 = self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=200").json
        self.assertEqual(p2["id"], w["id"])
        self.assertEqual(p2["secret"], p1["secret"])
        # a long poll waits for the reclaim deadline
        t0 = time.monotonic()
        p3 = self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=300&block_ms=900").json
        self.assertEqual(p3["id"], w["id"])
        self.assertGreater(time.monotonic() - t0, 0.2)
        self.assertEqual(self.c.req("POST", "%s/%s/ack" % (self.base, w["id"])).status, 200)
        time.sleep(0.25)
        self.assertIsNone(self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=200").json)
        self.assertEqual(self.c.req("GET", self.base + "/poll?reclaim_older_than_ms=-1").status, 400)

    def test_long_poll(self):
        t0 = time.monotonic()
        r = self.c.req("GET", self.base + "/poll?block_ms=300")
        el = time.monotonic() - t0
        self.assertEqual((r.status, r.raw), (200, b"null"))
        self.assertGreaterEqual(el, 0.28)
        self.assertLess(el, 1.0)
        t0 = time.monotonic()
        r = self.c.req("GET", self.base + "/poll")
        self.assertEqual(r.raw, b"null")
        self.assertLess(time.monotonic() - t0, 0.2)
        box = {}

        def later():
            time.sleep(0.15)
            box["w"] = self.fake_other("POST", "/_fake/environments/%s/work" % self.eid, {})

        th = threading.Thread(target=later)
        th.start()
        t0 = time.monotonic()
        r = self.c.req("GET", self.base + "/poll?block_ms=999")
        el = time.monotonic() - t0
        th.join()
        self.assertEqual(r.json["id"], box["w"]["id"])
        self.assertGreaterEqual(el, 0.1)
        self.assertLess(el, 0.7)
        for bad in ("0", "1000", "x", "-5"):
            self.assertError(self.c.req("GET", self.base + "/poll?block_ms=" + bad), 400, "invalid_request_error")
        self.assertEqual(self.c.req("GET", self.base + "/poll?block_ms=1").status, 200)

    def fake_other(self, method, path, body):
        c = Client(SRV.port, auth=None)
        try:
            return c.req(method, path, body).json
        finally:
            c.close()

    def test_workers_polling(self):
        for wid in ("worker-a", "worker-b", "worker-a", None):
            self.c.req("GET", self.base + "/poll", headers={"anthropic-worker-id": wid} if wid else None)
        self.assertEqual(self.stats()["workers_polling"], 2)
        other = self.create({"name": "o", "config": {"type": "self_hosted"}})["id"]
        self.assertEqual(self.c.req("GET", "/v1/environments/%s/work/stats" % other).json["workers_polling"], 0)

    def test_list_update(self):
        ids = [self.enqueue(self.eid)["id"] for _ in range(25)]
        got, pages = self.list_all(self.base, 10)
        self.assertEqual(pages, 3)
        self.assertEqual(got, list(reversed(ids)))
        self.assertEqual(len(self.c.req("GET", self.base).json["data"]), 20)
        for lim in ("0", "1001"):
            self.assertEqual(self.c.req("GET", self.base + "?limit=" + lim).status, 400)
        self.assertEqual(self.c.req("GET", self.base + "?page=bogus").status, 400)
        u = self.c.req("POST", "%s/%s" % (self.base, ids[0]), {"metadata": {"a": "1", "b": "2"}})
        self.assertEqual(u.json["metadata"], {"a": "1", "b": "2"})
        u = self.c.req("POST", "%s/%s" % (self.base, ids[0]), {"metadata": {"a": None, "c": ""}})
        self.assertEqual(u.json["metadata"], {"b": "2", "c": ""})
        self.assertEqual(self.c.req("POST", "%s/%s" % (self.base, ids[0]), {}).json["metadata"], {"b": "2", "c": ""})
        self.assertError(self.c.req("POST", "%s/%s" % (self.base, ids[0]), {"metadata": {"a": 1}}), 400,
                         "invalid_request_error", "invalid_metadata")
        self.assertError(self.c.req("POST", "%s/%s" % (self.base, ids[0]), {"state": "x"}), 400,
                         "invalid_request_error")

    def test_ttl_and_lease(self):
        w = self.enqueue(self.eid)
        self.c.req("POST", "%s/%s/ack" % (self.base, w["id"]))
        self.assertEqual(self.hb(w["id"], "NO_HEARTBEAT", "0").status, 400)
        self.assertEqual(self.hb(w["id"], "NO_HEARTBEAT", "abc").status, 400)
        h = self.hb(w["id"], "NO_HEARTBEAT", 5000).json
        self.assertEqual(h["ttl_seconds"], 600)
        h = self.hb(w["id"], h["last_heartbeat"], 1).json
        self.assertEqual((h["ttl_seconds"], h["lease_extended"]), (1, True))
        time.sleep(1.1)
        lost = self.hb(w["id"], h["last_heartbeat"], 1).json
        self.assertEqual((lost["lease_extended"], lost["last_heartbeat"], lost["state"]),
                         (False, h["last_heartbeat"], "active"))

    def test_configurable_lease_ttl(self):
        for bad_ttl in (0, -1, 601, "2", 1.5, True, None):
            with self.subTest(ttl=bad_ttl):
                self.assertError(self.fake("POST", "/_fake/lease", {"ttl_seconds": bad_ttl}), 400,
                                 "invalid_request_error")
        self.assertError(self.fake("POST", "/_fake/lease", {"ttl_seconds": 2, "x": 1}), 400,
                         "invalid_request_error")
        self.assertEqual(self.fake("POST", "/_fake/lease", {"ttl_seconds": 1}).json, {"ttl_seconds": 1})
        w = self.enqueue(self.eid)
        self.c.req("POST", "%s/%s/ack" % (self.base, w["id"]))
        h = self.hb(w["id"], "NO_HEARTBEAT").json
        self.assertEqual((h["ttl_seconds"], h["lease_extended"]), (1, True))
        time.sleep(1.2)
        lost = self.hb(w["id"], h["last_heartbeat"]).json
        self.assertEqual((lost["lease_extended"], lost["ttl_seconds"]), (False, 1))
        # an explicit desired_ttl_seconds still wins, and reset restores 120
        w2 = self.enqueue(self.eid)
        self.c.req("POST", "%s/%s/ack" % (self.base, w2["id"]))
        self.assertEqual(self.hb(w2["id"], "NO_HEARTBEAT", 7).json["ttl_seconds"], 7)
        self.fake("POST", "/_fake/reset")
        eid = self.create({"name": "sh", "config": {"type": "self_hosted"}})["id"]
        w3 = self.enqueue(eid)
        self.c.req("POST", "/v1/environments/%s/work/%s/ack" % (eid, w3["id"]))
        r = self.c.req("POST", "/v1/environments/%s/work/%s/heartbeat" % (eid, w3["id"]))
        self.assertEqual(r.json["ttl_seconds"], 120)

    def test_expire_as_if_given_to_another_worker(self):
        w = self.enqueue(self.eid)
        self.assertError(self.fake("POST", "/_fake/environments/%s/work/%s/expire" % (self.eid, w["id"])), 409,
                         "conflict_error")
        self.c.req("POST", "%s/%s/ack" % (self.base, w["id"]))
        h = self.hb(w["id"], "NO_HEARTBEAT").json
        e = self.fake("POST", "/_fake/environments/%s/work/%s/expire" % (self.eid, w["id"]))
        self.assertEqual(e.status, 200, e)
        self.assertNotEqual(e.json["latest_heartbeat_at"], h["last_heartbeat"])
        r = self.hb(w["id"], h["last_heartbeat"])
        body = self.assertError(r, 412, "invalid_request_error", "heartbeat_precondition_failed")
        cs = body["error"]["details"]["current_state"]
        self.assertEqual(cs["last_heartbeat"], e.json["latest_heartbeat_at"])
        self.assertNotEqual(cs["last_heartbeat"], h["last_heartbeat"])
        self.assertEqual(self.fake("POST", "/_fake/environments/%s/work/work_nope/expire" % self.eid).status, 404)
        # an expired lease is not one the old holder can win back with NO_HEARTBEAT either
        self.assertEqual(self.hb(w["id"], "NO_HEARTBEAT").status, 412)

    def test_enqueue_archived_and_delete(self):
        w = self.enqueue(self.eid)
        self.c.req("POST", "/v1/environments/%s/archive" % self.eid)
        r = self.fake("POST", "/_fake/environments/%s/work" % self.eid, {})
        self.assertError(r, 400, "invalid_request_error", "environment_archived")
        self.assertEqual(self.c.req("GET", self.base + "/poll").json["id"], w["id"])
        self.c.req("DELETE", "/v1/environments/" + self.eid)
        self.assertEqual(self.c.req("GET", "%s/%s" % (self.base, w["id"])).status, 404)


class TestConnectionsAndLog(Base):
    def test_keep_alive(self):
        self.fake("POST", "/_fake/reset")
        c = Client(SRV.port)
        try:
            e = c.req("POST", "/v1/environments", {"name": "k"}).json
            for _ in range(5):
                self.assertEqual(c.req("GET", "/v1/environments/" + e["id"]).status, 200)
            self.assertEqual(c.req("GET", "/v1/environments/env_nope").status, 404)  # errors keep it open
            self.assertEqual(c.req("GET", "/v1/environments").status, 200)
        finally:
            c.close()
        st = self.fake("GET", "/_fake/stats").json
        self.assertEqual(st["connections_opened"], 1)
        self.assertEqual(st["v1_connections_opened"], 1)
        self.assertEqual(st["v1_requests"], 8)
        self.assertEqual(st["requests_served"], 9)
        self.assertGreaterEqual(st["connections_open"], 1)

    def test_request_log(self):
        self.c.req("POST", "/v1/environments?x=1&y=a%20b&y=c", {"name": "logged"},
                   headers={"anthropic-workspace-id": "wrkspc_1"})
        self.c.req("POST", "/v1/environments/env_x/archive")
        self.c.req("GET", "/v1/environments", headers={"x-api-key": "bad"})
        self.fake("GET", "/_fake/stats")
        log = self.fake("GET", "/_fake/requests").json["data"]
        self.assertEqual(len(log), 3)
        e = log[0]
        self.assertEqual((e["method"], e["path"], e["query"], e["params"], e["status"]),
                         ("POST", "/v1/environments", "x=1&y=a%20b&y=c", {"x": "1", "y": "c"}, 200))
        self.assertEqual(json.loads(e["body"]), {"name": "logged"})
        self.assertEqual(e["headers"]["anthropic-workspace-id"], "wrkspc_1")
        self.assertEqual(e["headers"]["x-api-key"], API_KEY)
        self.assertEqual(e["headers"]["content-type"], "application/json")
        self.assertTrue(all(k == k.lower() for k in e["headers"]))
        self.assertIsInstance(e["time"], float)
        self.assertLess(abs(e["time"] - time.time()), 60)
        self.assertNotIn("fault", e)
        self.assertEqual((log[1]["query"], log[1]["params"], log[1]["body"], log[1]["status"]), ("", {}, None, 404))
        self.assertEqual(log[1]["headers"]["content-length"], "0")
        self.assertEqual(log[2]["status"], 401)
        self.assertLessEqual(log[0]["time"], log[1]["time"])
        only = self.fake("GET", "/_fake/requests?method=GET").json["data"]
        self.assertEqual(len(only), 1)
        self.assertEqual(self.fake("DELETE", "/_fake/requests").status, 200)
        self.assertEqual(self.fake("GET", "/_fake/requests").json["data"], [])


def raw_exchange(port, request, timeout=10):
    """Send raw bytes on a new connection; return everything read until EOF."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                chunks.append(b"<RST>")
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


def raw_get(port, path):
    return ("GET %s HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nanthropic-version: 2023-06-01\r\n"
            "anthropic-beta: %s\r\nConnection: close\r\n\r\n" % (path, API_KEY, BETA)).encode()


class TestFaults(Base):
    def add(self, spec):
        r = self.fake("POST", "/_fake/faults", spec)
        self.assertEqual(r.status, 200, r)
        return r.json["id"]

    def test_status_headers_times(self):
        fid = self.add({"method": "GET", "path_regex": r"^/v1/environments$", "status": 503, "times": 2,
                        "headers": {"retry-after": "0", "x-should-retry": "true"}})
        for _ in range(2):
            r = self.c.req("GET", "/v1/environments")
            self.assertError(r, 503, "api_error")
            self.assertEqual((r.headers["retry-after"], r.headers["x-should-retry"]), ("0", "true"))
        self.assertEqual(self.c.req("GET", "/v1/environments").status, 200)
        self.assertEqual(self.c.req("POST", "/v1/environments", {"name": "x"}).status, 200)  # method differs
        log = self.fake("GET", "/_fake/requests").json["data"]
        self.assertEqual([e.get("fault") for e in log], [fid, fid, None, None])
        self.assertEqual([e["status"] for e in log], [503, 503, 200, 200])
        desc = self.fake("GET", "/_fake/faults").json["data"][0]
        self.assertEqual((desc["id"], desc["fired"]), (fid, 2))

    def test_body_and_content_type(self):
        self.add({"status": 200, "body": "<html>hi</html>", "content_type": "text/html", "times": 1})
        r = self.c.req("GET", "/v1/environments")
        self.assertEqual((r.status, r.raw, r.headers["content-type"]), (200, b"<html>hi</html>", "text/html"))
        self.assertRegex(r.headers["request-id"], REQ_ID_RE)
        self.add({"status": 200, "body": {"data": [1], "next_page": None}})
        self.assertEqual(self.c.req("GET", "/v1/environments").raw, b'{"data":[1],"next_page":null}')
        self.add({"status": 418, "body_base64": base64.b64encode(b"\xff\xfe").decode()})
        r = self.c.req("GET", "/v1/environments")
        self.assertEqual((r.status, r.raw), (418, b"\xff\xfe"))
        self.add({"status": 429, "times": -1, "path_regex": "archive"})
        for _ in range(3):
            self.assertError(self.c.req("POST", "/v1/environments/env_x/archive"), 429, "rate_limit_error")
        self.assertEqual(self.fake("DELETE", "/_fake/faults").status, 200)
        self.assertEqual(self.c.req("POST", "/v1/environments/env_x/archive").status, 404)
        self.assertEqual(self.fake("POST", "/_fake/faults", {"stauts": 500}).status, 400)
        self.assertEqual(self.fake("POST", "/_fake/faults", {"path_regex": "("}).status, 400)

    def test_skip_page_3_of_25(self):
        self.fake("POST", "/_fake/environments/bulk", {"count": 25})
        self.add({"method": "GET", "path_regex": r"^/v1/environments$", "skip": 2, "status": 500})
        statuses, page = [], None
        for _ in range(3):
            url = "/v1/environments?limit=1" + ("&page=" + quote(page, safe="") if page else "")
            r = self.c.req("GET", url)
            statuses.append(r.status)
            if r.status == 200:
                page = r.json["next_page"]
        self.assertEqual(statuses, [200, 200, 500])
        r = self.c.req("GET", "/v1/environments?limit=1&page=" + quote(page, safe=""))
        self.assertEqual(r.status, 200)  # times=1: the retry succeeds

    def test_delay(self):
        self.add({"delay_ms": 300, "path_regex": r"^/v1/environments$"})
        t0 = time.monotonic()
        r = self.c.req("GET", "/v1/environments")
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["data"], [])

    def test_close(self):
        self.add({"method": "POST", "close": True})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.c.req("POST", "/v1/environments", {"name": "lost"})
        self.c.close()
        self.assertEqual(self.c.req("GET", "/v1/environments").json["data"], [])  # not processed
        self.add({"method": "POST", "close": True, "after": True})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.c.req("POST", "/v1/environments", {"name": "made"})
        self.c.close()
        self.assertEqual([e["name"] for e in self.c.req("GET", "/v1/environments").json["data"]], ["made"])
        self.add({"reset": True})
        out = raw_exchange(SRV.port, raw_get(SRV.port, "/v1/environments"))
        self.assertIn(out, (b"", b"<RST>"))
        log = self.fake("GET", "/_fake/requests").json["data"]
        self.assertTrue(all(e.get("fault") for e in log[:1]))
        self.assertIsNone(log[0]["status"])

    def test_truncate(self):
        self.fake("POST", "/_fake/environments/bulk", {"count": 5})
        self.add({"truncate": True, "path_regex": r"^/v1/environments$"})
        self.c.conn.request("GET", "/v1/environments", headers=self.c.defaults)
        r = self.c.conn.getresponse()
        self.assertEqual(r.status, 200)
        declared = int(r.getheader("content-length"))
        with self.assertRaises(http.client.IncompleteRead) as cm:
            r.read()
        self.assertEqual(len(cm.exception.partial), declared // 2)
        self.c.close()
        self.add({"truncate": True, "status": 500})
        out = raw_exchange(SRV.port, raw_get(SRV.port, "/v1/environments"))
        head, _, body = out.partition(b"\r\n\r\n")
        cl = int(re.search(rb"content-length: (\d+)", head).group(1))
        self.assertTrue(head.startswith(b"HTTP/1.1 500"))
        self.assertLess(len(body), cl)

    def test_drip(self):
        self.add({"status": 200, "body": '{"a":1}', "drip_ms": 25})
        t0 = time.monotonic()
        r = self.c.req("GET", "/v1/environments")
        self.assertGreaterEqual(time.monotonic() - t0, 0.15)
        self.assertEqual(r.raw, b'{"a":1}')
        self.add({"drip_ms": 5})  # the real answer, dripped
        r = self.c.req("GET", "/v1/environments")
        self.assertEqual(r.json, {"data": [], "next_page": None})

    def test_after(self):
        self.add({"method": "POST", "path_regex": r"^/v1/environments$", "status": 500, "after": True})
        r = self.c.req("POST", "/v1/environments", {"name": "dup"})
        self.assertError(r, 500, "api_error")
        self.assertEqual([e["name"] for e in self.c.req("GET", "/v1/environments").json["data"]], ["dup"])
        self.add({"method": "POST", "path_regex": r"^/v1/environments$", "status": 500})
        self.c.req("POST", "/v1/environments", {"name": "not-made"})
        self.assertEqual(len(self.c.req("GET", "/v1/environments").json["data"]), 1)

    def test_headers_on_real_answer(self):
        self.add({"headers": {"retry-after-ms": "10", "x-extra": "1"}})
        r = self.c.req("GET", "/v1/environments")
        self.assertEqual((r.status, r.headers["retry-after-ms"], r.headers["x-extra"]), (200, "10", "1"))
        self.assertEqual(r.json["data"], [])

    def test_control_paths_never_faulted(self):
        self.add({"status": 500, "times": -1})
        self.assertEqual(self.fake("GET", "/_fake/stats").status, 200)
        self.assertEqual(self.c.req("GET", "/v1/environments").status, 500)

    def run_random(self, seed, n=40):
        self.fake("POST", "/_fake/reset")
        self.add({"random": {"seed": seed}, "times": -1})
        out = []
        for i in range(n):
            raw = raw_exchange(SRV.port, raw_get(SRV.port, "/v1/environments?i=%d" % i))
            raw = re.sub(rb"req_[0-9A-Za-z]{24}", b"req_X", raw)
            raw = re.sub(rb"date: [^\r]*\r\n", b"", raw)
            out.append(raw)
        return out

    def test_random_deterministic(self):
        a = self.run_random(1234)
        b = self.run_random(1234)
        self.assertEqual(a, b)
        c = self.run_random(99)
        self.assertNotEqual(a, c)
        statuses = {x[9:12] for x in a + c if x.startswith(b"HTTP/1.1 ")}
        self.assertGreaterEqual(len(statuses), 4)
        self.assertTrue(any(s.startswith(b"2") for s in statuses))
        self.assertTrue(any(s.startswith(b"5") for s in statuses))
        self.assertTrue(any(s.startswith(b"4") for s in statuses))


class TestControl(Base):
    def test_bulk_shapes_and_reset(self):
        r = self.fake("POST", "/_fake/environments/bulk", {"count": 1001})
        self.assertEqual(r.json, {"count": 1001})
        r = self.fake("POST", "/_fake/environments/bulk", {"count": 2, "name_prefix": "q-",
                                                           "config": {"type": "self_hosted"}})
        self.assertEqual(len(r.json["ids"]), 2)
        e = self.c.req("GET", "/v1/environments/" + r.json["ids"][1]).json
        self.assertEqual((e["name"], e["config"]), ("q-2", {"type": "self_hosted"}))
        self.assertEqual(self.fake("POST", "/_fake/environments/bulk", {"count": "x"}).status, 400)
        self.assertEqual(self.fake("POST", "/_fake/environments/bulk",
                                   {"count": 1, "config": {"type": "nope"}}).status, 400)
        self.fake("POST", "/_fake/faults", {"status": 500, "path_regex": "nothing"})
        self.fake("POST", "/_fake/reset")
        self.assertEqual(self.c.req("GET", "/v1/environments").json["data"], [])
        self.assertEqual(self.fake("GET", "/_fake/faults").json["data"], [])
        self.assertEqual(len(self.fake("GET", "/_fake/requests").json["data"]), 1)
        self.assertEqual(self.fake("GET", "/_fake/health").json, {"ok": True})


class TestProcess(unittest.TestCase):
    def test_custom_key_and_sigterm(self):
        srv = FakeServer("--api-key", "custom-key")
        try:
            c = Client(srv.port, key="custom-key")
            self.assertEqual(c.req("GET", "/v1/environments").status, 200)
            c.close()
            c = Client(srv.port)
            self.assertEqual(c.req("GET", "/v1/environments").status, 401)
            c.close()
            idle = socket.create_connection(("127.0.0.1", srv.port))  # an open keep-alive connection
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            self.assertEqual(srv.proc.wait(10), 0)
            self.assertLess(time.monotonic() - t0, 5)
            idle.close()
        finally:
            srv.stop()

    def test_sigint(self):
        srv = FakeServer()
        try:
            srv.proc.send_signal(signal.SIGINT)
            self.assertEqual(srv.proc.wait(10), 0)
        finally:
            srv.stop()

    def test_tls(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl not installed")
        d = tempfile.mkdtemp(prefix="fake-tls-")
        try:
            cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            srv = FakeServer("--tls-cert", cert, "--tls-key", key)
            try:
                self.assertEqual(srv.scheme, "https")
                ctx = ssl.create_default_context(cafile=cert)
                c = Client(srv.port, ssl_context=ctx)
                self.assertEqual(c.req("POST", "/v1/environments", {"name": "tls"}).status, 200)
                self.assertEqual(len(c.req("GET", "/v1/environments").json["data"]), 1)
                c.close()
                st = Client(srv.port, ssl_context=ctx, auth=None)
                stats = st.req("GET", "/_fake/stats").json
                st.close()
                self.assertEqual(stats["v1_connections_opened"], 1)
                # a plain-HTTP client gets no answer but does not hurt the server
                try:
                    raw_exchange(srv.port, raw_get(srv.port, "/v1/environments"), timeout=5)
                except OSError:
                    pass
                c = Client(srv.port, ssl_context=ctx)
                self.assertEqual(c.req("GET", "/v1/environments").status, 200)
                c.close()
            finally:
                srv.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------


class CountingResult(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def main():
    argv = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    verbosity = 2 if len(argv) != len(sys.argv) - 1 else 1
    loader = unittest.TestLoader()
    try:
        if argv:
            suite = loader.loadTestsFromNames(argv, sys.modules[__name__])
        else:
            suite = loader.loadTestsFromModule(sys.modules[__name__])
    except (AttributeError, ImportError, ValueError) as e:
        print("cannot load tests %s: %s" % (argv, e))
        print("0 passed, 1 failed")
        return 1
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=verbosity, resultclass=CountingResult)
    t0 = time.monotonic()
    result = runner.run(suite)
    sys.stderr.flush()
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    line = "%d passed, %d failed" % (result.passed + len(result.expectedFailures), failed)
    if skipped:
        line += ", %d skipped" % skipped
    print("fake API suite took %.1f s" % (time.monotonic() - t0))
    print(line)
    sys.stdout.flush()
    return 1 if failed or not result.wasSuccessful() else 0


if __name__ == "__main__":
    sys.exit(main())
