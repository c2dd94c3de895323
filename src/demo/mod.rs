//! `mfa-gateway demo`: everything on loopback in one command — a sample OWA-like Exchange
//! stand-in and the gateway in front of it — so an administrator can see the gateway work
//! before pointing it at real servers.

mod adfs;
pub mod provider;
mod upstream;

use std::net::SocketAddr;

#[cfg(feature = "test-kit")]
pub use provider::{parse_form_post, sign_in_form, Forgery, ProviderCall, Signing};
pub use provider::{
    ClientAuthMethod, ClientCredential, ProviderEndpoint, ProviderOptions, TestProvider, TestUser,
};
pub use upstream::SampleExchange;

use crate::config::{Config, MapSecrets};
use crate::{Gateway, Listeners};

/// The demo's registered application (any GUID would do).
const DEMO_CLIENT_ID: &str = "6a1e7d2b-9c4f-4e8a-b3d5-0f2e4c6a8b1d";

/// How the demo's sample Exchange signs users in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoSso {
    /// Exchange takes whoever the gateway lets through (`sso = "none"`).
    #[default]
    None,
    /// Exchange in AD FS claims authentication mode; the gateway issues its token
    /// (`sso = "adfs"`).
    Adfs,
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    listen: SocketAddr,
    sso: DemoSso,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    // AD FS mode: a token-signing certificate made now, in files the configuration names
    // (removed when the demo ends), and the sample Exchange trusting its thumbprint.
    let adfs = match sso {
        DemoSso::None => None,
        DemoSso::Adfs => Some(AdfsFiles::create()?),
    };
    let mode = adfs
        .as_ref()
        .map(|files| adfs::AdfsMode::new(&files.signing.cert_pem).map(std::sync::Arc::new))
        .transpose()?;
    let exchange = SampleExchange::start_in(loopback, mode)
        .await
        .map_err(|e| format!("cannot start the sample Exchange server: {e}"))?;
    let provider = TestProvider::start(ProviderOptions::default())
        .await
        .map_err(|e| format!("cannot start the test identity provider: {e}"))?;
    let client_secret = random_base64(32)?;
    provider.register_client(
        DEMO_CLIENT_ID,
        ClientCredential::Secret(client_secret.clone()),
    );

    // Secrets come from memory here; a real deployment reads them from files.
    let secrets = MapSecrets::new()
        .with_file("/demo/client-secret", &client_secret)
        .with_file("/demo/session.key", &random_base64(32)?);
    let mut toml = demo_config(listen, exchange.addr(), provider.issuer());
    if let Some(files) = &adfs {
        toml = toml.replace("access = \"mfa\"\n", "access = \"mfa\"\nsso = \"adfs\"\n");
        toml.push_str(&format!(
            "\n[sso.adfs]\ntoken_signing = {{ cert = {:?}, key = {:?} }}\n",
            files.cert_path(),
            files.key_path()
        ));
    }
    let config = Config::from_toml(&toml, &secrets).map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config.server)
        .await
        .map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config, listeners, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    let port = gateway.http_addr.ok_or("no listener")?.port();
    println!();
    println!("  mfa-gateway demo is running: a test identity provider shaped like Entra ID,");
    println!("  a sample Exchange server, and the gateway in front of it.");
    println!();
    println!("  Open http://localhost:{port}/owa/ in a browser and sign in as alice.");
    println!("  Choose \"Password only\" to see a sign-in without MFA refused,");
    println!("  or \"Password and multifactor authentication\" to reach the mailbox.");
    println!();
    if let Some(files) = &adfs {
        println!("  Exchange runs in AD FS mode: after the MFA sign-in the gateway issues the");
        println!("  token Exchange signs you in with, so the mailbox opens with no second prompt.");
        println!(
            "  Token-signing certificate thumbprint (AdfsSignCertificateThumbprints): {}",
            files.thumbprint
        );
        println!();
    }
    println!("  Load balancer health:  http://localhost:{port}/_gateway/health");
    println!("  Closed by default:     http://localhost:{port}/ews/exchange.asmx (404)");
    println!("  Press Ctrl+C to stop.");
    println!();
    gateway.wait().await;
    drop(provider);
    Ok(())
}

/// The demo's token-signing certificate and key, in a directory of their own under the
/// system's temporary directory, removed when the demo ends.
struct AdfsFiles {
    dir: std::path::PathBuf,
    signing: adfs::DemoSigning,
    thumbprint: String,
}

impl AdfsFiles {
    fn create() -> Result<AdfsFiles, String> {
        let signing = adfs::DemoSigning::generate()?;
        let name = random_base64(9)?.replace(['/', '+'], "_");
        let dir = std::env::temp_dir().join(format!("mfa-gateway-demo-{name}"));
        let files = AdfsFiles {
            thumbprint: adfs::AdfsMode::new(&signing.cert_pem)?
                .thumbprint()
                .to_string(),
            dir,
            signing,
        };
        std::fs::create_dir(&files.dir)
            .and_then(|()| std::fs::write(files.cert_path(), &files.signing.cert_pem))
            .and_then(|()| write_private(&files.key_path(), &files.signing.key_pem))
            .map_err(|e| format!("cannot write the token-signing files: {e}"))?;
        Ok(files)
    }

    fn cert_path(&self) -> std::path::PathBuf {
        self.dir.join("token-signing.pem")
    }

    fn key_path(&self) -> std::path::PathBuf {
        self.dir.join("token-signing.key")
    }
}

impl Drop for AdfsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file only its owner can read, as a private key must be.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

fn random_base64(bytes: usize) -> Result<String, String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| "no randomness available".to_owned())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buffer))
}

fn demo_config(listen: SocketAddr, exchange: SocketAddr, issuer: &str) -> String {
    format!(
        r#"
[server]
http_listen = "{listen}"

[oidc]
issuer = "{issuer}"
client_id = "{DEMO_CLIENT_ID}"
client_secret = {{ file = "/demo/client-secret" }}

[mfa]
amr_any_of = ["mfa", "ngcmfa"]
max_auth_age = "12h"

[session]
keys = [{{ file = "/demo/session.key" }}]
lifetime = "10h"
idle_timeout = "1h"

[upstreams.exchange]
servers = ["http://{exchange}"]
health_check = {{ path = "/owa/healthcheck.htm", interval = "5s", timeout = "2s" }}

[[routes]]
host = "localhost"
path = "/owa"
upstream = "exchange"
access = "mfa"
unauthenticated_status = 440

[[routes]]
host = "localhost"
path = "/owa/healthcheck.htm"
upstream = "exchange"
access = "public"

[[routes]]
host = "localhost"
path = "/ecp"
upstream = "exchange"
access = "mfa"
max_auth_age = "1h"
"#
    )
}
