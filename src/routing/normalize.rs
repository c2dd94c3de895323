//! The path as IIS will read it: [`normalize_path`], and [`BadPath`] for what IIS could read in
//! more than one way.

use std::borrow::Cow;
use std::fmt;

/// A request path that cannot be judged safely (see [`normalize_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request path is malformed or ambiguously encoded")
    }
}

impl std::error::Error for BadPath {}

/// The path as IIS will resolve it: percent-decoded once (as UTF-8), `\` read as `/`, repeated
/// slashes collapsed, `.` segments dropped, `..` applied, trailing dots and spaces of each segment
/// removed (Windows ignores them: `/ecp.` is the ecp directory). A trailing `/` is kept.
///
/// Refused: a path not starting with `/`; a `%` not followed by two hex digits (this includes
/// IIS's `%u002e` form); invalid UTF-8 once decoded; control characters; an escape still present
/// after decoding (`%252e`, double escaping, which IIS refuses by default); `..` above the root
/// (browsers never send it: it is a probe, not a request to clamp); a segment made only of dots
/// and spaces other than `.` and `..`.
///
/// A path that needs none of this is returned borrowed, without allocating.
pub fn normalize_path(raw_path: &str) -> Result<Cow<'_, str>, BadPath> {
    let Some(after_root) = raw_path.strip_prefix('/') else {
        return Err(BadPath);
    };
    refuse_control_characters(raw_path)?;
    if is_already_normal(after_root) {
        return Ok(Cow::Borrowed(raw_path));
    }
    if raw_path.contains('%') {
        let decoded = percent_decode_once(raw_path)?;
        refuse_control_characters(&decoded)?;
        if has_escape_left(&decoded) {
            return Err(BadPath);
        }
        resolve_segments(&decoded).map(Cow::Owned)
    } else {
        resolve_segments(raw_path).map(Cow::Owned)
    }
}

/// True when [`resolve_segments`] would return the path unchanged: nothing to decode, no `\`,
/// no empty segment except a trailing `/`, no segment ending in `.` or ` ` (which covers `.`
/// and `..`).
fn is_already_normal(after_root: &str) -> bool {
    if after_root.bytes().any(|b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut segments = after_root.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if (segment.is_empty() && !is_last) || segment.ends_with(['.', ' ']) {
            return false;
        }
    }
    true
}

/// Applies the segment rules to a decoded path that starts with `/`.
pub(super) fn resolve_segments(path: &str) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let mut ends_with_separator = true;
    for piece in path.split(['/', '\\']) {
        match piece {
            "" | "." => ends_with_separator = true,
            ".." => {
                // Segments in `out` never contain '/', so the last '/' starts the last segment.
                let start = out.rfind('/').ok_or(BadPath)?;
                out.truncate(start);
                ends_with_separator = true;
            }
            _ => {
                let name = piece.trim_end_matches(['.', ' ']);
                if name.is_empty() {
                    // "...", ". ", " ": whether IIS reads these as "." / ".." or as a name is
                    // not worth guessing, and no client needs them.
                    return Err(BadPath);
                }
                out.push('/');
                out.push_str(name);
                ends_with_separator = false;
            }
        }
    }
    if ends_with_separator {
        out.push('/');
    }
    Ok(out)
}

fn percent_decode_once(raw: &str) -> Result<String, BadPath> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = bytes.next().and_then(hex_value).ok_or(BadPath)?;
            let low = bytes.next().and_then(hex_value).ok_or(BadPath)?;
            out.push((high << 4) | low);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| BadPath)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// After one decode, a `%` followed by two hex digits or by `u` would be decoded again by
/// anything that double-decodes: refuse rather than judge one reading and serve the other.
fn has_escape_left(decoded: &str) -> bool {
    let bytes = decoded.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b'u' | b'U'), _) => true,
                (Some(high), Some(low)) => high.is_ascii_hexdigit() && low.is_ascii_hexdigit(),
                _ => false,
            }
    })
}

/// NUL, C0 controls, DEL and C1 controls (U+0080–U+009F, encoded as `C2 80`–`C2 9F`).
fn refuse_control_characters(path: &str) -> Result<(), BadPath> {
    let bytes = path.as_bytes();
    let found = bytes.iter().enumerate().any(|(i, &b)| {
        b.is_ascii_control() || (b == 0xC2 && matches!(bytes.get(i + 1), Some(0x80..=0x9F)))
    });
    if found {
        Err(BadPath)
    } else {
        Ok(())
    }
}
