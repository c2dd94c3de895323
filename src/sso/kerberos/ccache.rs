//! Reading the flags of a user's S4U2Self ticket ("evidence ticket"), which GSSAPI does not
//! expose: the impersonated credential is stored into a private file credential cache
//! (MIT's `FILE:` format, versions 3 and 4), read back and deleted at once. Used only after the
//! KDC refused a delegation, to tell an account that cannot be delegated (its evidence ticket
//! is not forwardable) from an SPN the service account may not delegate to.

use libgssapi::credential::{Cred, CredUsage};
use libgssapi::oid::GSS_MECH_KRB5;

const TKT_FLG_FORWARDABLE: u32 = 0x4000_0000;

/// Whether the credential's S4U2Self ticket (the one from the user to `gateway_principal`) is
/// forwardable; `None` when that cannot be told.
pub(super) fn evidence_forwardable(cred: &Cred, gateway_principal: &str) -> Option<bool> {
    use rand::Rng as _;
    let name: u64 = rand::thread_rng().gen();
    let path = std::env::temp_dir().join(format!(
        "mfa-gateway-{}-{name:016x}.ccache",
        std::process::id()
    ));
    let location = format!("FILE:{}", path.display());
    let stored = cred.store_into(
        &location,
        true,
        false,
        CredUsage::Initiate,
        Some(GSS_MECH_KRB5),
    );
    // The file holds tickets: gone before anything else happens.
    let bytes = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    stored.ok()?;
    let tickets = parse(&bytes.ok()?)?;
    tickets
        .iter()
        .find(|t| t.server == gateway_principal && t.client != t.server)
        .map(|t| t.flags & TKT_FLG_FORWARDABLE != 0)
}

#[derive(Debug, PartialEq, Eq)]
struct Ticket {
    client: String,
    server: String,
    flags: u32,
}

fn parse(bytes: &[u8]) -> Option<Vec<Ticket>> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u16()?;
    match version {
        0x0504 => {
            let header = r.u16()?;
            r.take(usize::from(header))?;
        }
        0x0503 => {}
        _ => return None,
    }
    let _default = r.principal()?;
    let mut tickets = Vec::new();
    while r.remaining() > 0 {
        let client = r.principal()?;
        let server = r.principal()?;
        let _enctype = r.u16()?;
        r.data()?;
        for _ in 0..4 {
            r.u32()?;
        }
        let _is_skey = r.take(1)?;
        let flags = r.u32()?;
        for _ in 0..2 {
            // addresses, then authorization data: (u16 type, data) each
            let count = r.u32()?;
            for _ in 0..count {
                r.u16()?;
                r.data()?;
            }
        }
        r.data()?;
        r.data()?;
        tickets.push(Ticket {
            client,
            server,
            flags,
        });
    }
    Some(tickets)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.remaining() < n {
            return None;
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Some(out)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn data(&mut self) -> Option<&'a [u8]> {
        let length = usize::try_from(self.u32()?).ok()?;
        self.take(length)
    }

    /// `name/instance@REALM`.
    fn principal(&mut self) -> Option<String> {
        let _name_type = self.u32()?;
        let count = self.u32()?;
        let realm = String::from_utf8_lossy(self.data()?).into_owned();
        let mut names = Vec::new();
        for _ in 0..count {
            names.push(String::from_utf8_lossy(self.data()?).into_owned());
        }
        Some(format!("{}@{realm}", names.join("/")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(out: &mut Vec<u8>, names: &[&str], realm: &str) {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for text in std::iter::once(realm).chain(names.iter().copied()) {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }

    fn credential(out: &mut Vec<u8>, client: &[&str], server: &[&str], flags: u32) {
        principal(out, client, "CORP.CONTOSO.TEST");
        principal(out, server, "CORP.CONTOSO.TEST");
        out.extend_from_slice(&18u16.to_be_bytes());
        out.extend_from_slice(&32u32.to_be_bytes());
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&[0; 16]);
        out.push(0);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&128u16.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(b"pac");
        out.extend_from_slice(&6u32.to_be_bytes());
        out.extend_from_slice(b"ticket");
        out.extend_from_slice(&0u32.to_be_bytes());
    }

    #[test]
    fn the_flags_of_each_ticket_in_a_version_4_cache_are_read() {
        let mut bytes = vec![0x05, 0x04, 0x00, 0x0c];
        bytes.extend_from_slice(&[0; 12]);
        principal(&mut bytes, &["alice"], "CORP.CONTOSO.TEST");
        credential(
            &mut bytes,
            &["svc-mfagw"],
            &["krbtgt", "CORP.CONTOSO.TEST"],
            0x40e1_0000,
        );
        credential(&mut bytes, &["alice"], &["svc-mfagw"], 0x00a1_0000);
        let tickets = parse(&bytes).unwrap();
        assert_eq!(
            tickets,
            vec![
                Ticket {
                    client: "svc-mfagw@CORP.CONTOSO.TEST".into(),
                    server: "krbtgt/CORP.CONTOSO.TEST@CORP.CONTOSO.TEST".into(),
                    flags: 0x40e1_0000,
                },
                Ticket {
                    client: "alice@CORP.CONTOSO.TEST".into(),
                    server: "svc-mfagw@CORP.CONTOSO.TEST".into(),
                    flags: 0x00a1_0000,
                },
            ]
        );
        assert_eq!(tickets[1].flags & TKT_FLG_FORWARDABLE, 0);
        assert!(parse(&bytes[..bytes.len() - 3]).is_none());
        assert!(parse(&[0x05, 0x01]).is_none());
    }
}
