//! The TLS front door as a browser meets it: the certificate chosen by SNI (exact names and a
//! wildcard), TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, HTTP/2 and HTTP/1.1 browsers both
//! reaching Exchange over HTTP/1.1 with the Host they sent, HSTS, and the plain-HTTP listener:
//! a redirect to HTTPS for published hosts only, or plain forwarding when no certificate is
//! configured (a load balancer terminates TLS).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use support::{client, FakeExchange, IssuedCert, TestGateway, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const CONTOSO: &str = "mail.contoso.com";
const FABRIKAM: &str = "autodiscover.fabrikam.com";

/// A configuration publishing `/owa` (and `/autodiscover`) on both hosts from `exchange`,
/// with the given certificates and listeners.
fn gateway_toml(certs: &[&IssuedCert], exchange: &FakeExchange, https: bool, http: bool) -> String {
    let mut toml = String::from("[server]\n");
    if https {
        toml.push_str("https_listen = \"127.0.0.1:0\"\n");
    }
    if http {
        toml.push_str("http_listen = \"127.0.0.1:0\"\n");
    }
    for cert in certs {
        toml.push_str(&format!(
            "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.cert.display(),
            cert.key.display()
        ));
    }
    toml.push_str(&format!(
        "\n[upstreams.exchange]\nservers = [\"{}\"]\n",
        exchange.url()
    ));
    for (host, path) in [
        (CONTOSO, "/owa"),
        (FABRIKAM, "/autodiscover"),
        ("mail.contoso.com", "/ecp"),
    ] {
        toml.push_str(&format!(
            "\n[[routes]]\nhost = \"{host}\"\npath = \"{path}\"\nupstream = \"exchange\"\naccess = \"public\"\n"
        ));
    }
    toml
}

/// A rustls client trusting the test CA, limited to `versions`, offering `alpn`.
fn tls_client(
    pki: &TestPki,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).expect("test CA PEM");
    roots.add(ca).expect("test CA is a usable root");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Opens a TLS connection to `addr` asking for `sni`, verifying the certificate against the
/// test CA for that name.
async fn handshake(config: ClientConfig, addr: SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake finished in time")
    .unwrap_or_else(|e| panic!("TLS handshake for {sni} failed: {e}"))
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, connection) = stream.get_ref();
    let chain = connection
        .peer_certificates()
        .expect("the gateway presented a certificate");
    chain.first().expect("a leaf certificate").to_vec()
}

async fn start_exchange() -> FakeExchange {
    FakeExchange::builder("ex01").start().await
}

#[tokio::test]
async fn sni_chooses_the_certificate_of_the_host_the_browser_asked_for() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let fabrikam = pki.issue(&[FABRIKAM]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(
        &[&contoso, &fabrikam],
        &exchange,
        true,
        false,
    ))
    .await;
    let addr = gateway.https.expect("https listener");
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let versions = rustls::DEFAULT_VERSIONS;

    let to_contoso = handshake(tls_client(&pki, versions, alpn), addr, CONTOSO).await;
    assert_eq!(
        peer_leaf(&to_contoso),
        contoso.der,
        "SNI {CONTOSO} must get the mail.contoso.com certificate"
    );

    let to_fabrikam = handshake(tls_client(&pki, versions, alpn), addr, FABRIKAM).await;
    assert_eq!(
        peer_leaf(&to_fabrikam),
        fabrikam.der,
        "SNI {FABRIKAM} must get the autodiscover.fabrikam.com certificate, not the first one configured"
    );

    // SNI is case-insensitive, as DNS names are.
    let upper = handshake(
        tls_client(&pki, versions, alpn),
        addr,
        "AutoDiscover.Fabrikam.COM",
    )
    .await;
    assert_eq!(peer_leaf(&upper), fabrikam.der);
}

#[tokio::test]
async fn wildcard_certificate_serves_a_host_one_label_below_its_domain() {
    let pki = TestPki::new();
    // The wildcard is not first, so falling back to the first certificate would show.
    let fabrikam = pki.issue(&[FABRIKAM]);
    let wildcard = pki.issue(&["*.contoso.com"]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(
        &[&fabrikam, &wildcard],
        &exchange,
        true,
        false,
    ))
    .await;
    let addr = gateway.https.expect("https listener");

    let stream = handshake(
        tls_client(&pki, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
        addr,
        CONTOSO,
    )
    .await;
    assert_eq!(
        peer_leaf(&stream),
        wildcard.der,
        "mail.contoso.com must be served with *.contoso.com"
    );

    // And a request over that connection reaches Exchange.
    let client = client(&pki, &[CONTOSO], addr, false);
    let response = client
        .get(format!("https://{CONTOSO}:{}/owa/", addr.port()))
        .send()
        .await
        .expect("request over the wildcard certificate");
    assert_eq!(response.status(), 200);
    assert_eq!(exchange.user_requests().len(), 1);
}

#[tokio::test]
async fn tls12_only_and_tls13_only_browsers_both_connect_with_their_version() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, false)).await;
    let addr = gateway.https.expect("https listener");

    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut stream =
            handshake(tls_client(&pki, &[version], &[b"http/1.1"]), addr, CONTOSO).await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        // The connection is usable for HTTP, not only for a handshake.
        stream
            .write_all(b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: close\r\n\r\n")
            .await
            .expect("write request");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "{expected:?}: {}",
            String::from_utf8_lossy(&response)
        );
    }
}

/// A ClientHello as an old browser would send it: record version TLS 1.0, `client_version`
/// as given, no `supported_versions` extension, ECDHE suites usable with the test ECDSA
/// certificates.
fn legacy_client_hello(client_version: [u8; 2], sni: &str) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut hello = Vec::new();
    hello.extend_from_slice(&client_version);
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x0035];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        hello.extend_from_slice(&suite.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null only

    let mut extensions = Vec::new();
    let name = sni.as_bytes();
    let mut server_name = Vec::new();
    server_name.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    server_name.push(0); // host_name
    server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
    server_name.extend_from_slice(name);
    extension(&mut extensions, 0x0000, &server_name);
    // supported_groups: x25519, secp256r1
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extension(
        &mut extensions,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);

    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Sends `hello` and returns the first bytes the server answers with (empty when it closed).
async fn first_answer_to(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(hello).await.expect("send ClientHello");
    let mut answer = vec![0u8; 5];
    let mut filled = 0;
    while filled < answer.len() {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer[filled..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => filled += n,
            Err(_) => panic!("the gateway neither answered nor closed within 5s"),
        }
    }
    answer.truncate(filled);
    answer
}

#[tokio::test]
async fn tls11_client_hello_is_refused_while_the_same_hello_as_tls12_is_answered() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, false)).await;
    let addr = gateway.https.expect("https listener");

    // Control: the hand-made hello is acceptable when it says TLS 1.2.
    let tls12 = first_answer_to(addr, &legacy_client_hello([3, 3], CONTOSO)).await;
    assert_eq!(
        tls12.first(),
        Some(&0x16),
        "a TLS 1.2 hello must get a handshake record (ServerHello), got {tls12:02x?}"
    );
    assert_eq!(tls12.get(1..3), Some(&[3u8, 3][..]));

    // TLS 1.1: no ServerHello, only an alert or a closed connection.
    let tls11 = first_answer_to(addr, &legacy_client_hello([3, 2], CONTOSO)).await;
    assert!(
        tls11.is_empty() || tls11[0] == 0x15,
        "a TLS 1.1 hello must be refused with an alert, got {tls11:02x?}"
    );
    // TLS 1.0 likewise.
    let tls10 = first_answer_to(addr, &legacy_client_hello([3, 1], CONTOSO)).await;
    assert!(
        tls10.is_empty() || tls10[0] == 0x15,
        "a TLS 1.0 hello must be refused with an alert, got {tls10:02x?}"
    );
}

#[tokio::test]
async fn alpn_prefers_h2_and_still_serves_http11_only_browsers() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, false)).await;
    let addr = gateway.https.expect("https listener");
    let versions = rustls::DEFAULT_VERSIONS;

    let both = handshake(
        tls_client(&pki, versions, &[b"h2", b"http/1.1"]),
        addr,
        CONTOSO,
    )
    .await;
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let both_reversed = handshake(
        tls_client(&pki, versions, &[b"http/1.1", b"h2"]),
        addr,
        CONTOSO,
    )
    .await;
    assert_eq!(
        both_reversed.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the gateway's preference (h2) decides"
    );

    let http11 = handshake(tls_client(&pki, versions, &[b"http/1.1"]), addr, CONTOSO).await;
    assert_eq!(http11.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn http2_and_http11_browsers_both_reach_exchange_over_http11_with_their_host() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, false)).await;
    let addr = gateway.https.expect("https listener");
    let url = format!(
        "https://{CONTOSO}:{}/owa/?ae=Folder&t=IPF.Note",
        addr.port()
    );

    let h2 = client(&pki, &[CONTOSO], addr, true);
    let response = h2.get(&url).send().await.expect("HTTP/2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "ex01 /owa/");

    let h1 = client(&pki, &[CONTOSO], addr, false);
    let response = h1.get(&url).send().await.expect("HTTP/1.1 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "ex01 /owa/");

    let seen = exchange.user_requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let browser_host = format!("{CONTOSO}:{}", addr.port());
    for request in &seen {
        assert_eq!(request.version, http::Version::HTTP_11, "{request:#?}");
        assert_eq!(request.uri, "/owa/?ae=Folder&t=IPF.Note");
        let hosts: Vec<_> = request.headers.get_all(http::header::HOST).iter().collect();
        assert_eq!(hosts, vec![browser_host.as_str()], "{request:#?}");
    }
}

#[tokio::test]
async fn https_responses_carry_hsts_whether_proxied_or_from_the_gateway() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, false)).await;
    let addr = gateway.https.expect("https listener");

    for http2 in [false, true] {
        let client = client(&pki, &[CONTOSO], addr, http2);
        for (path, status) in [("/owa/", 200), ("/ews/exchange.asmx", 404)] {
            let response = client
                .get(format!("https://{CONTOSO}:{}{path}", addr.port()))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), status, "{path}");
            let hsts = response
                .headers()
                .get(http::header::STRICT_TRANSPORT_SECURITY)
                .unwrap_or_else(|| panic!("no HSTS on {path} (http2: {http2})"))
                .to_str()
                .expect("HSTS is text");
            let max_age: u64 = hsts
                .split(';')
                .find_map(|d| d.trim().strip_prefix("max-age="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("HSTS without max-age: {hsts}"));
            assert!(
                max_age >= 15_552_000,
                "HSTS max-age should be at least 180 days: {hsts}"
            );
        }
    }
}

/// A raw HTTP/1.1 exchange on a plain TCP connection: the status, the headers and the body.
async fn plain_request(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("the gateway answered and closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn plain_http_get_is_sent_to_https_with_301_keeping_path_and_query() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, true)).await;
    let http = gateway.http.expect("http listener");
    let https_port = gateway.https.expect("https listener").port();

    let target = "/owa/?path=/mail/inbox&X-OWA-CANARY=Zx1_y-2.3%3D&q=a%20b";
    for (method, host) in [
        ("GET", "mail.contoso.com"),
        ("HEAD", "mail.contoso.com"),
        ("GET", "Mail.Contoso.com:80"),
    ] {
        let (status, headers, _) = plain_request(
            http,
            &format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 301, "{method} with Host {host}");
        let location = header(&headers, "location").expect("Location");
        let expected_host = host.split(':').next().unwrap_or(host);
        assert_eq!(
            location,
            format!("https://{expected_host}:{https_port}{target}"),
            "{method} with Host {host}"
        );
    }
    assert!(
        exchange.user_requests().is_empty(),
        "a redirect must not reach Exchange"
    );
}

#[tokio::test]
async fn plain_http_post_is_sent_to_https_with_308_so_the_body_is_kept() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, true)).await;
    let http = gateway.http.expect("http listener");
    let https_port = gateway.https.expect("https listener").port();

    let (status, headers, _) = plain_request(
        http,
        "POST /owa/auth.owa?x=1 HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\nConnection: close\r\n\r\nusername=",
    )
    .await;
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("https://mail.contoso.com:{https_port}/owa/auth.owa?x=1").as_str())
    );
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn plain_http_for_a_host_the_gateway_does_not_publish_gets_404_not_a_redirect() {
    let pki = TestPki::new();
    let contoso = pki.issue(&[CONTOSO]);
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[&contoso], &exchange, true, true)).await;
    let http = gateway.http.expect("http listener");

    for host in [
        "evil.example",
        "mail.contoso.com.evil.example",
        "evil.example:443",
        "127.0.0.1",
    ] {
        let (status, headers, body) = plain_request(
            http,
            &format!("GET /owa/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 404, "Host {host}");
        assert_eq!(
            header(&headers, "location"),
            None,
            "no redirect to an unpublished host {host}"
        );
        assert!(!body.contains("evil.example"), "the page echoes the Host");
    }
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn without_certificates_the_http_listener_serves_plain_http_and_forwards() {
    let exchange = start_exchange().await;
    let gateway = TestGateway::start(&gateway_toml(&[], &exchange, false, true)).await;
    assert!(gateway.https.is_none());
    let http = gateway.http.expect("http listener");

    let (status, headers, body) = plain_request(
        http,
        "GET /owa/?ae=Item HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "ex01 /owa/");
    assert_eq!(header(&headers, "location"), None);
    assert_eq!(header(&headers, "x-served-by"), Some("ex01"));

    let seen = exchange.user_requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].uri, "/owa/?ae=Item");
    assert_eq!(seen[0].headers["host"], "mail.contoso.com");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
}
