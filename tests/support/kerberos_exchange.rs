//! Exchange's OWA on Windows authentication with Extended Protection, for the Kerberos tests:
//! `tests/kerberos/exchange_standin.py` run by Debian's python with its `gssapi` bindings (MIT
//! GSSAPI, the acceptor side). It verifies the SPNEGO token with Exchange's keytab and the
//! channel binding of its own certificate, refuses tokens without one, answers with the user
//! and a mutual-authentication token, and keeps a connection authenticated as its user the way
//! IIS does (authPersistNonNTLM). Also: a client connection to it that shows the server
//! certificate, for the binding.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::pki::{IssuedCert, TestPki};

const PYTHON: &str = "/usr/bin/python3";

/// The stand-in process; killed on drop.
pub struct KerberosExchange {
    child: Child,
    pub port: u16,
    pub cert: IssuedCert,
    pki: TestPki,
    verdicts: Arc<Mutex<Vec<serde_json::Value>>>,
}

/// One answer read from the stand-in.
#[derive(Debug)]
pub struct ExchangeAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ExchangeAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl KerberosExchange {
    /// Starts the stand-in for `mail.contoso.test` with `keytab` (KRB5_CONFIG comes from this
    /// process's environment).
    pub fn start(keytab: &Path) -> KerberosExchange {
        let pki = TestPki::new();
        let cert = pki.issue(&["mail.contoso.test"]);
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kerberos/exchange_standin.py");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg("sha256")
            .env("KRB5_KTNAME", keytab)
            .env_remove("KRB5_CLIENT_KTNAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{PYTHON} (with python3-gssapi) is needed: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_else(|| {
            panic!("the Exchange stand-in did not start (python3-gssapi installed?)")
        });
        let port: u16 = first
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the Exchange stand-in said {first:?}"));
        let verdicts = Arc::new(Mutex::new(Vec::new()));
        let sink = verdicts.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        KerberosExchange {
            child,
            port,
            cert,
            pki,
            verdicts,
        }
    }

    /// Every verdict so far (`{"accepted": …, "user"/"refusal": …}`), oldest first.
    pub fn verdicts(&self) -> Vec<serde_json::Value> {
        self.verdicts.lock().unwrap().clone()
    }

    /// The CA file that issued the stand-in's certificate, for the gateway's `ca_file`.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.pki.ca_path()
    }

    /// `https://127.0.0.1:PORT`, for the gateway's `servers`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Tells the stand-in what the next requests meet (`refuse-next`, `omit-reply-next`,
    /// `foreign-binding`, `own-binding`), on a connection of its own.
    pub async fn control(&self, command: &str) {
        let answer = self
            .connect()
            .await
            .get(&format!("/_control/{command}"), None)
            .await;
        assert_eq!(answer.status, 200, "control {command}: {answer:?}");
    }

    /// A new TLS connection to the stand-in, as `mail.contoso.test`.
    pub async fn connect(&self) -> ExchangeConnection {
        let config = self.pki.rustls_client_config(&[b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("mail.contoso.test").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        ExchangeConnection { stream }
    }
}

impl Drop for KerberosExchange {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTPS connection to the stand-in.
pub struct ExchangeConnection {
    stream: TlsStream<TcpStream>,
}

impl ExchangeConnection {
    /// The DER of the certificate the server presented on this connection.
    pub fn server_certificate(&self) -> Vec<u8> {
        let (_, session) = self.stream.get_ref();
        session.peer_certificates().unwrap()[0].to_vec()
    }

    /// `GET path` with an optional `Authorization` header; the answer read to its end.
    pub async fn get(&mut self, path: &str, authorization: Option<&str>) -> ExchangeAnswer {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: mail.contoso.test\r\n");
        if let Some(value) = authorization {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stand-in closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buffer[head_end + 4..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stand-in closed the connection mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        ExchangeAnswer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
