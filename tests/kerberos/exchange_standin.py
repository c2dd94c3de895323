#!/usr/bin/python3
"""Exchange's OWA on Windows authentication, as IIS serves it, for the Kerberos tests.

- Without a token: 401 with `WWW-Authenticate: Negotiate`.
- `Authorization: Negotiate <token>`: the SPNEGO token is accepted with the keytab of
  Exchange's account (KRB5_KTNAME) and the channel binding of this server's own certificate
  (`tls-server-end-point`, RFC 5929), as Extended Protection "Require" does: a token bound to
  another certificate is refused by GSSAPI, and a token without a binding is refused here
  (MIT's acceptor lets it through unless it checks the channel-bound flag).
- Accepted: 200 with the user in `X-Authenticated-User` and the body, and the mutual
  authentication answer in `WWW-Authenticate: Negotiate <token>`.
- The connection stays authenticated as that user, as IIS does for Kerberos
  (authPersistNonNTLM): later requests on it without a token are served as the same user.
- Refused: 401 `WWW-Authenticate: Negotiate` with the reason in `X-Refusal`.
- Every answer names the connection it came on (`X-Connection`: the client's port, and
  `X-Connection-Requests`: how many requests that connection carried), so a test can tell which
  requests shared a connection. POST bodies are read and their length returned in
  `X-Body-Length`.
- `/_control/…` (no authentication; tests call it directly, never through the gateway) changes
  what the next requests meet: `refuse-next` (the next token is answered 401 Negotiate, as IIS
  answers a ticket that expired), `omit-reply-next` (the next accepted token gets no mutual
  authentication answer), `basic-next` (the next token is answered 401 offering only Basic, as
  a virtual directory without Windows authentication does), `foreign-binding` / `own-binding` (expect the channel binding of
  another certificate, as IIS behind a TLS-terminating load balancer does, or of its own).

Each verdict is printed to stdout as one JSON line.

Usage: exchange_standin.py CERT KEY HASH   (HASH: the certificate's binding hash, sha256|sha384)
Prints `listening PORT` once it serves on 127.0.0.1.
"""
import base64
import hashlib
import http.server
import json
import ssl
import sys
import threading

import gssapi
import gssapi.raw as graw

CERT, KEY, HASH = sys.argv[1], sys.argv[2], sys.argv[3]

with open(CERT) as f:
    pem = f.read()
der = ssl.PEM_cert_to_DER_cert(pem)
BINDING = b"tls-server-end-point:" + hashlib.new(HASH, der).digest()
CHANNEL_BOUND = 2048  # GSS_C_CHANNEL_BOUND_FLAG, MIT 1.19 and later

ACCEPTOR = gssapi.Credentials(usage="accept")
FOREIGN_BINDING = b"tls-server-end-point:" + hashlib.sha256(b"another certificate").digest()

CONTROL_LOCK = threading.Lock()
CONTROL = {"refuse_next": 0, "omit_reply_next": 0, "basic_next": 0, "foreign_binding": False}


def take(flag):
    with CONTROL_LOCK:
        if CONTROL[flag] > 0:
            CONTROL[flag] -= 1
            return True
        return False


def verdict(**fields):
    print(json.dumps(fields), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.user = None  # the connection's authenticated user (authPersistNonNTLM)
        self.requests = 0
        self.body_length = 0

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body):
        data = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("X-Connection", str(self.client_address[1]))
        self.send_header("X-Connection-Requests", str(self.requests))
        self.send_header("X-Body-Length", str(self.body_length))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def verdict(self, **fields):
        verdict(path=self.path, method=self.command, peer=self.client_address[1], **fields)

    def refuse(self, why):
        self.verdict(accepted=False, refusal=why)
        self.answer(401, [("WWW-Authenticate", "Negotiate"), ("X-Refusal", why)], "401 Unauthorized\n")

    def control(self):
        command = self.path[len("/_control/"):]
        with CONTROL_LOCK:
            if command == "refuse-next":
                CONTROL["refuse_next"] += 1
            elif command == "omit-reply-next":
                CONTROL["omit_reply_next"] += 1
            elif command == "basic-next":
                CONTROL["basic_next"] += 1
            elif command == "foreign-binding":
                CONTROL["foreign_binding"] = True
            elif command == "own-binding":
                CONTROL["foreign_binding"] = False
            else:
                return self.answer(404, [], "unknown control\n")
        self.answer(200, [], "ok\n")

    def do_POST(self):
        self.do_GET()

    def do_GET(self):
        self.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.body_length = len(self.rfile.read(length)) if length else 0
        if self.path.startswith("/_control/"):
            return self.control()
        header = self.headers.get("Authorization")
        if header is None:
            if self.user is None:
                self.verdict(accepted=False, refusal="no token")
                self.answer(401, [("WWW-Authenticate", "Negotiate")], "401 Unauthorized\n")
            else:
                self.verdict(accepted=True, user=self.user, persisted=True)
                self.answer(200, [("X-Authenticated-User", self.user)], self.user + "\n")
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "negotiate" or not token:
            return self.refuse("not a Negotiate token")
        if take("basic_next"):
            self.verdict(accepted=False, refusal="Windows authentication off (Basic only)")
            return self.answer(401, [("WWW-Authenticate", 'Basic realm="mail.contoso.test"')], "401 Unauthorized\n")
        if take("refuse_next"):
            self.user = None
            return self.refuse("ticket expired (told to refuse the next token)")
        with CONTROL_LOCK:
            expected = FOREIGN_BINDING if CONTROL["foreign_binding"] else BINDING
        try:
            token = base64.b64decode(token)
            bindings = graw.ChannelBindings(application_data=expected)
            result = graw.accept_sec_context(token, ACCEPTOR, channel_bindings=bindings)
        except Exception as e:  # GSSError, binascii.Error
            return self.refuse("token refused: " + str(e).replace("\n", " ")[:300])
        if result.more_steps:
            return self.refuse("context not complete")
        if not int(result.flags) & CHANNEL_BOUND:
            return self.refuse("token without channel binding (Extended Protection)")
        user = str(gssapi.Name(result.initiator_name))
        self.user = user
        self.verdict(accepted=True, user=user, persisted=False)
        headers = [("X-Authenticated-User", user)]
        if result.token and not take("omit_reply_next"):
            headers.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(result.token).decode()))
        self.answer(200, headers, user + "\n")


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
