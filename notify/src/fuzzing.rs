//! Fuzz body of the `push_answer` target (`fuzz/fuzz_targets/push_answer.rs`), also replayed on
//! stable by `notify/tests/fuzz_corpus.rs`. What a push service answers is peer input: every
//! classifier must turn any status, headers and body into an outcome without panicking, and a
//! success status always means delivered.
//!
//! Input layout: two bytes of status (big-endian, folded into 100..=999), then header lines
//! `name: value\n` up to an empty line, then the body. Lines that are not valid headers are
//! skipped (the HTTP stack would have refused them).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::retry::Outcome;
use crate::{apns, fcm, webhook};

/// Builds the input's (status, headers, body) and classifies it as every provider would.
pub fn push_answer(data: &[u8]) {
    let Some((status, rest)) = data.split_first_chunk::<2>() else { return };
    let Ok(status) = StatusCode::from_u16(100 + u16::from_be_bytes(*status) % 900) else {
        return;
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&rest[..0], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let (apns, _renew) = apns::classify(status, &headers, body);
    let fcm = fcm::classify(status, &headers, body);
    let hook = webhook::classify(status, &headers);
    let _ = crate::http::retry_after(&headers);
    if status == StatusCode::OK {
        assert_eq!(apns, Outcome::Delivered, "APNs 200");
    }
    if status.is_success() {
        assert_eq!(fcm, Outcome::Delivered, "FCM {status}");
        assert_eq!(hook, Outcome::Delivered, "webhook {status}");
    }
}
