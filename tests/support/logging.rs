//! What the gateway logs while a test runs: its log lines, shown by the test harness for a
//! failing test (level from `TEST_LOG`, default `warn`), and its audit events (target `audit`,
//! see `src/observe/audit.rs`) captured as data, so a test can tell which check refused a
//! sign-in — the same event an operator's SIEM receives.
//!
//! One capture serves the whole test process, whatever the tokio runtime flavour: an event is
//! recorded synchronously on the thread that emits it, before the gateway sends its answer.
//! `TestGateway::audit_events` picks out the events of one gateway.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

/// Installs ring as the TLS provider and the log output with the audit capture. Every harness
/// calls it; calling it again does nothing.
pub fn init() {
    mfa_gateway::install_crypto_provider();
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let output = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                EnvFilter::try_from_env("TEST_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
            );
        // A filter decided per call site, once: the gateway's (and hyper's) many debug and
        // trace call sites stay disabled, as with a plain `warn` filter.
        let audit =
            AuditCapture.with_filter(filter::Targets::new().with_target("audit", Level::TRACE));
        if tracing_subscriber::registry()
            .with(output)
            .with(audit)
            .try_init()
            .is_ok()
        {
            CAPTURING.store(true, Ordering::SeqCst);
        }
    });
}

/// One audit event as the gateway emitted it: its level and every field, as text.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub level: Level,
    pub fields: BTreeMap<String, String>,
}

impl AuditEvent {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// `sign_in`, `sign_out` or `policy`.
    pub fn event(&self) -> &str {
        self.field("event").unwrap_or_default()
    }

    /// `success`, `refused` or `denied`.
    pub fn outcome(&self) -> &str {
        self.field("outcome").unwrap_or_default()
    }

    /// The reason code: for a refused sign-in, which check refused it.
    pub fn reason(&self) -> &str {
        self.field("reason").unwrap_or_default()
    }

    /// The port in `host` (the Host header as the browser sent it), which names the gateway
    /// listener the request reached.
    pub fn host_port(&self) -> Option<u16> {
        self.field("host")?.rsplit_once(':')?.1.parse().ok()
    }
}

static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Vec<AuditEvent>> = Mutex::new(Vec::new());

/// A mark in the capture: events captured later come after it.
pub fn audit_mark() -> usize {
    CAPTURED.lock().unwrap().len()
}

/// The audit events captured since `mark`, from every gateway of this test process.
pub fn audit_events_since(mark: usize) -> Vec<AuditEvent> {
    assert!(
        CAPTURING.load(Ordering::SeqCst),
        "audit events are not captured: a tracing subscriber was installed before support::init()"
    );
    CAPTURED.lock().unwrap()[mark..].to_vec()
}

struct AuditCapture;

impl<S: Subscriber> Layer<S> for AuditCapture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "audit" {
            return;
        }
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        CAPTURED.lock().unwrap().push(AuditEvent {
            level: *event.metadata().level(),
            fields: fields.0,
        });
    }
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
