//! The MIT keytab file format (version 0x0502, what `ktpass`, `ktutil`, `msktutil` and
//! `samba-tool domain exportkeytab` write), read far enough to list which principals it holds
//! keys for and with which encryption types. `check-config` and the gateway's start use it to
//! refuse a `principal` the keytab lacks before any user is turned away by the KDC.

use std::fmt;

/// One key of a keytab: whose, which version, which encryption type. The key itself is not
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    /// `name/instance@REALM`, as Kerberos writes principals.
    pub principal: String,
    pub kvno: u32,
    pub enctype: i32,
}

impl KeytabEntry {
    /// The encryption type's name as `klist -e` shows it.
    pub fn enctype_name(&self) -> String {
        enctype_name(self.enctype)
    }
}

/// `aes256-cts-hmac-sha1-96`, … for the numbers of RFC 3961/3962/4757/8009.
pub fn enctype_name(enctype: i32) -> String {
    match enctype {
        17 => "aes128-cts-hmac-sha1-96".to_owned(),
        18 => "aes256-cts-hmac-sha1-96".to_owned(),
        19 => "aes128-cts-hmac-sha256-128".to_owned(),
        20 => "aes256-cts-hmac-sha384-192".to_owned(),
        23 => "arcfour-hmac (RC4)".to_owned(),
        1 | 3 => "des-cbc (DES)".to_owned(),
        other => format!("enctype {other}"),
    }
}

/// True for RC4 and DES: encryption types Windows domain controllers are phasing out.
pub fn is_weak_enctype(enctype: i32) -> bool {
    matches!(enctype, 1 | 3 | 23 | 24)
}

/// Why a keytab file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeytabFormatError(String);

impl fmt::Display for KeytabFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeytabFormatError {}

/// The entries of a keytab file, in file order.
pub fn parse_keytab(bytes: &[u8]) -> Result<Vec<KeytabEntry>, KeytabFormatError> {
    let mut reader = Reader { bytes, at: 0 };
    match reader.u16()? {
        0x0502 => {}
        0x0501 => {
            return Err(KeytabFormatError(
                "is a version 1 keytab (0x0501, host byte order); export it again with ktpass or ktutil, which write version 2".to_owned(),
            ))
        }
        _ => {
            return Err(KeytabFormatError(
                "is not a keytab file (it does not start with 0x0502)".to_owned(),
            ))
        }
    }
    let mut entries = Vec::new();
    while reader.remaining() > 0 {
        let size = reader.i32()?;
        if size == 0 {
            break;
        }
        let length = size.unsigned_abs() as usize;
        let record = reader.take(length)?;
        // A negative size is a hole left by a deleted entry.
        if size > 0 {
            entries.push(parse_entry(record)?);
        }
    }
    Ok(entries)
}

fn parse_entry(record: &[u8]) -> Result<KeytabEntry, KeytabFormatError> {
    let mut r = Reader {
        bytes: record,
        at: 0,
    };
    let components = r.u16()?;
    let realm = r.text()?;
    let mut names = Vec::with_capacity(usize::from(components));
    for _ in 0..components {
        names.push(r.text()?);
    }
    let _name_type = r.u32()?;
    let _timestamp = r.u32()?;
    let kvno8 = r.u8()?;
    let enctype = r.u16()?;
    let key_length = r.u16()?;
    r.take(usize::from(key_length))?;
    // Since krb5 1.14 a 32-bit kvno follows when the 8-bit one overflowed; 0 means "use the
    // 8-bit one".
    let kvno = match r.remaining() {
        n if n >= 4 => match r.u32()? {
            0 => u32::from(kvno8),
            big => big,
        },
        _ => u32::from(kvno8),
    };
    Ok(KeytabEntry {
        principal: format!("{}@{realm}", names.join("/")),
        kvno,
        enctype: i32::from(enctype as i16),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], KeytabFormatError> {
        if self.remaining() < n {
            return Err(KeytabFormatError(
                "is truncated or damaged (an entry runs past the end of the file)".to_owned(),
            ));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, KeytabFormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, KeytabFormatError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, KeytabFormatError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, KeytabFormatError> {
        self.u32().map(|v| v as i32)
    }

    fn text(&mut self) -> Result<String, KeytabFormatError> {
        let length = self.u16()?;
        let bytes = self.take(usize::from(length))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// A keytab file with the given entries and all-zero keys, for tests.
#[cfg(any(test, feature = "test-kit"))]
pub fn write_keytab_for_tests(entries: &[(&str, u32, i32)]) -> Vec<u8> {
    let mut out = vec![0x05, 0x02];
    for (principal, kvno, enctype) in entries {
        let (names, realm) = principal.rsplit_once('@').unwrap_or((principal, ""));
        let components: Vec<&str> = names.split('/').collect();
        let mut record = Vec::new();
        record.extend_from_slice(&(components.len() as u16).to_be_bytes());
        for text in std::iter::once(realm).chain(components.iter().copied()) {
            record.extend_from_slice(&(text.len() as u16).to_be_bytes());
            record.extend_from_slice(text.as_bytes());
        }
        record.extend_from_slice(&1u32.to_be_bytes());
        record.extend_from_slice(&0u32.to_be_bytes());
        record.push(*kvno as u8);
        record.extend_from_slice(&(*enctype as u16).to_be_bytes());
        let key_length: u16 = if *enctype == 17 { 16 } else { 32 };
        record.extend_from_slice(&key_length.to_be_bytes());
        record.extend(std::iter::repeat_n(0u8, usize::from(key_length)));
        record.extend_from_slice(&kvno.to_be_bytes());
        out.extend_from_slice(&(record.len() as i32).to_be_bytes());
        out.extend_from_slice(&record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_a_version_2_keytab_are_listed() {
        let bytes = write_keytab_for_tests(&[
            ("svc-mfagw@CORP.CONTOSO.COM", 2, 18),
            ("HTTP/gw.corp.contoso.com@CORP.CONTOSO.COM", 300, 17),
        ]);
        let entries = parse_keytab(&bytes).unwrap();
        assert_eq!(
            entries,
            vec![
                KeytabEntry {
                    principal: "svc-mfagw@CORP.CONTOSO.COM".into(),
                    kvno: 2,
                    enctype: 18
                },
                KeytabEntry {
                    principal: "HTTP/gw.corp.contoso.com@CORP.CONTOSO.COM".into(),
                    kvno: 300,
                    enctype: 17
                },
            ]
        );
        assert_eq!(entries[0].enctype_name(), "aes256-cts-hmac-sha1-96");
    }

    #[test]
    fn holes_left_by_deleted_entries_are_skipped() {
        let one = write_keytab_for_tests(&[("a@R", 1, 18)]);
        let mut bytes = vec![0x05, 0x02];
        bytes.extend_from_slice(&(-8i32).to_be_bytes());
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&one[2..]);
        let entries = parse_keytab(&bytes).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].principal, "a@R");
    }

    #[test]
    fn files_that_are_not_keytabs_are_refused() {
        assert!(parse_keytab(b"-----BEGIN CERTIFICATE-----")
            .unwrap_err()
            .to_string()
            .contains("not a keytab"));
        assert!(parse_keytab(&[0x05, 0x01])
            .unwrap_err()
            .to_string()
            .contains("version 1"));
        let mut truncated = write_keytab_for_tests(&[("a@R", 1, 18)]);
        truncated.truncate(truncated.len() - 10);
        assert!(parse_keytab(&truncated)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
