//! WebSocket upgrades, on routes that allow them (`websocket = true`).
//!
//! After a `101 Switching Protocols` the gateway no longer sees requests: it relays bytes. An
//! upstream that answered 101 and then read HTTP from the tunnel would let a browser send
//! `GET /ews/…` there, past routing and the MFA check. So the handshake is checked (RFC 6455
//! section 4: the upstream must prove it read this request's key), and every byte the browser
//! sends afterwards must belong to a masked client frame (section 5.2): anything else — HTTP
//! text included, whose first byte sets reserved bits and a reserved opcode — ends the tunnel
//! before it reaches Exchange.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";

/// The `Sec-WebSocket-Key` of a request that asks, the HTTP/1.1 way, to become a WebSocket and
/// nothing else: `Connection: upgrade`, `Upgrade: websocket`. Any other upgrade (`h2c`, a list
/// of protocols) is `None` and is not forwarded.
pub(super) fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut upgrades = headers.get_all(UPGRADE).iter();
    let websocket = upgrades
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && upgrades.next().is_none();
    if !(asks && websocket) {
        return None;
    }
    headers.get(SEC_WEBSOCKET_KEY).cloned()
}

/// Whether the upstream's 101 answers this key (`Sec-WebSocket-Accept`) and switched to
/// WebSocket, as RFC 6455 section 4.1 requires a client to check.
pub(super) fn handshake_accepted(key: &HeaderValue, response: &HeaderMap) -> bool {
    let upgraded = response
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let expected = accept_for(key.as_bytes());
    let accepted = response
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes().trim_ascii() == expected.as_bytes());
    upgraded && accepted
}

/// Reserved bits the browser may set: RSV1 when the upstream agreed to `permessage-deflate`.
pub(super) fn allowed_reserved_bits(response: &HeaderMap) -> u8 {
    let deflate = response
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("permessage-deflate"));
    if deflate {
        0x40
    } else {
        0
    }
}

fn accept_for(key: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.trim_ascii());
    context.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(context.finish())
}

/// Relays the browser's bytes to the upstream while they form valid client frames, and the
/// upstream's bytes back. Ends both directions at the first invalid byte from the browser.
pub(super) async fn relay<C, S>(client: C, server: S, reserved_bits: u8)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let upward = async {
        let mut frames = ClientFrames::new(reserved_bits);
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(chunk) = buffer.get(..n) else { break };
            if let Err(e) = frames.check(chunk) {
                tracing::warn!(
                    error = e,
                    "WebSocket tunnel closed: the browser sent bytes that are not a client frame"
                );
                break;
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downward = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    // Either direction ending ends the tunnel: a half-open relay would keep a socket to
    // Exchange for nobody.
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
    }
}

/// Where the checker is in the browser's byte stream.
#[derive(Debug)]
enum Position {
    /// Reading a frame header; `have` bytes of it are in `header`.
    Header { header: [u8; 14], have: usize },
    /// Inside a frame's payload.
    Payload { remaining: u64 },
}

/// Checks that a byte stream is a sequence of frames a WebSocket client may send (RFC 6455
/// section 5.2): masked, known opcodes, no reserved bits beyond those negotiated, control
/// frames unfragmented and at most 125 bytes, lengths in their shortest form.
#[derive(Debug)]
pub(super) struct ClientFrames {
    position: Position,
    reserved_bits: u8,
}

impl ClientFrames {
    pub(super) fn new(reserved_bits: u8) -> ClientFrames {
        ClientFrames {
            position: Position::Header {
                header: [0; 14],
                have: 0,
            },
            reserved_bits,
        }
    }

    pub(super) fn check(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Payload { remaining } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *remaining -= take as u64;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.position = Position::Header {
                            header: [0; 14],
                            have: 0,
                        };
                    }
                }
                Position::Header { header, have } => {
                    let (first, rest) = bytes.split_at(1);
                    header[*have] = first[0];
                    *have += 1;
                    bytes = rest;
                    if let Some(payload) = frame_header(&header[..*have], self.reserved_bits)? {
                        self.position = if payload == 0 {
                            Position::Header {
                                header: [0; 14],
                                have: 0,
                            }
                        } else {
                            Position::Payload { remaining: payload }
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// Judges a frame header read so far: `Ok(None)` while more bytes are needed, the payload
/// length once it is complete, an error as soon as a byte cannot belong to a client frame.
fn frame_header(header: &[u8], reserved_bits: u8) -> Result<Option<u64>, &'static str> {
    let Some(&first) = header.first() else {
        return Ok(None);
    };
    let opcode = first & 0x0f;
    let is_control = opcode >= 0x8;
    if !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xa) {
        return Err("reserved opcode");
    }
    if first & 0x70 & !reserved_bits != 0 {
        return Err("reserved bits set");
    }
    if is_control && first & 0x80 == 0 {
        return Err("fragmented control frame");
    }
    let Some(&second) = header.get(1) else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err("unmasked client frame");
    }
    let short = second & 0x7f;
    if is_control && short > 125 {
        return Err("control frame over 125 bytes");
    }
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    // The length is judged as soon as its bytes are in, before the masking key.
    if header.len() < 2 + extended {
        return Ok(None);
    }
    let length = match extended {
        0 => u64::from(short),
        2 => {
            let length = u64::from(u16::from_be_bytes([header[2], header[3]]));
            if length < 126 {
                return Err("length not in its shortest form");
            }
            length
        }
        _ => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            let length = u64::from_be_bytes(bytes);
            if length >> 63 != 0 {
                return Err("length over 2^63");
            }
            if length <= u64::from(u16::MAX) {
                return Err("length not in its shortest form");
            }
            length
        }
    };
    if header.len() < 2 + extended + 4 {
        return Ok(None);
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (the mask is all zeroes: the payload bytes are sent as they are).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn accept_value_matches_the_example_of_rfc_6455() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn text_binary_ping_and_close_frames_pass_even_split_byte_by_byte() {
        let mut stream = frame(0x81, b"hello");
        stream.extend(frame(0x82, &[7u8; 300]));
        stream.extend(frame(0x82, &vec![1u8; 70_000]));
        stream.extend(frame(0x89, b""));
        stream.extend(frame(0x88, &[0x03, 0xe8]));
        let mut whole = ClientFrames::new(0);
        assert_eq!(whole.check(&stream), Ok(()));
        let mut split = ClientFrames::new(0);
        for byte in &stream {
            assert_eq!(split.check(std::slice::from_ref(byte)), Ok(()));
        }
    }

    #[test]
    fn an_http_request_inside_the_tunnel_is_refused_at_its_first_byte() {
        let mut frames = ClientFrames::new(0);
        assert!(frames
            .check(b"GET /ews/Exchange.asmx HTTP/1.1\r\nHost: mail\r\n\r\n")
            .is_err());
        // Also after a valid frame, and with permessage-deflate's RSV1 allowed.
        let mut frames = ClientFrames::new(0x40);
        let mut stream = frame(0x81, b"hi");
        stream.extend_from_slice(b"GET /owa/ HTTP/1.1\r\n\r\n");
        assert!(frames.check(&stream).is_err());
    }

    #[test]
    fn unmasked_reserved_and_oversized_control_frames_are_refused() {
        assert!(ClientFrames::new(0).check(&[0x81, 0x05]).is_err());
        assert!(ClientFrames::new(0).check(&[0xc1, 0x80]).is_err());
        assert_eq!(ClientFrames::new(0x40).check(&[0xc1, 0x80]), Ok(()));
        assert!(ClientFrames::new(0).check(&[0x83]).is_err());
        assert!(ClientFrames::new(0).check(&[0x09, 0x80]).is_err());
        assert!(ClientFrames::new(0).check(&[0x89, 0x80 | 126]).is_err());
        assert!(ClientFrames::new(0)
            .check(&[0x82, 0x80 | 126, 0x00, 0x05])
            .is_err());
        assert!(ClientFrames::new(0)
            .check(&[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0])
            .is_err());
    }

    #[test]
    fn only_a_plain_websocket_upgrade_is_requested() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(requested(&headers).is_some());
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(requested(&headers).is_none());
        headers.insert(UPGRADE, HeaderValue::from_static("websocket, h2c"));
        assert!(requested(&headers).is_none());
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.remove(SEC_WEBSOCKET_KEY);
        assert!(requested(&headers).is_none());
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        headers.remove(CONNECTION);
        assert!(requested(&headers).is_none());
    }
}
