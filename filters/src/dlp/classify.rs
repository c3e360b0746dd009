//! Byte classes of 64-byte blocks, vectorised: the seeds of the built-in triggers — word bytes
//! (word starts: token prefixes), digits (the digit-led PII detectors) and `@` (e-mail
//! addresses).

/// Bit masks of the 64 bytes from `base` (bit k: `base + k`; bytes past the end are in none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Classes {
    /// `[A-Za-z0-9_]`.
    pub word: u64,
    pub digit: u64,
    pub at: u64,
}

#[inline]
pub(super) fn classify64(hay: &[u8], base: usize) -> Classes {
    #[cfg(target_arch = "x86_64")]
    {
        if base + 64 <= hay.len() {
            return x86::classify(&hay[base..base + 64]);
        }
        // The last block, padded with zero bytes (in no class).
        let mut block = [0u8; 64];
        let tail = &hay[base.min(hay.len())..];
        block[..tail.len()].copy_from_slice(tail);
        x86::classify(&block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    scalar(&hay[base.min(hay.len())..hay.len().min(base + 64)])
}

/// The same masks, a byte at a time.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scalar(block: &[u8]) -> Classes {
    let mut c = Classes::default();
    for (k, &b) in block.iter().enumerate() {
        c.word |= u64::from(b.is_ascii_alphanumeric() || b == b'_') << k;
        c.digit |= u64::from(b.is_ascii_digit()) << k;
        c.at |= u64::from(b == b'@') << k;
    }
    c
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Classes;
    use std::arch::x86_64::*;

    // Ranges by one add and one signed compare: `b + 0x50` maps b'0'..=b'9' onto
    // -128..=-119, and `(b | 0x20) + 0x1f` maps both letter cases onto -128..=-103.

    #[inline]
    pub(super) fn classify(block: &[u8]) -> Classes {
        debug_assert_eq!(block.len(), 64);
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked above); the block is 64 bytes long.
            return unsafe { avx2(block) };
        }
        // SAFETY: SSE2 is part of the x86_64 baseline; the block is 64 bytes long.
        unsafe { sse2(block) }
    }

    /// # Safety
    /// `block` is 64 bytes long and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(block: &[u8]) -> Classes {
        let mut c = Classes::default();
        for k in 0..2 {
            // SAFETY: the load reads block[32k..32k + 32], in bounds for a 64-byte block.
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k) as *const __m256i) };
            let digit = _mm256_cmpgt_epi8(
                _mm256_set1_epi8(-118),
                _mm256_add_epi8(v, _mm256_set1_epi8(0x50)),
            );
            let lower = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
            let alpha = _mm256_cmpgt_epi8(
                _mm256_set1_epi8(-102),
                _mm256_add_epi8(lower, _mm256_set1_epi8(0x1f)),
            );
            let under = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'_' as i8));
            let word = _mm256_or_si256(_mm256_or_si256(digit, alpha), under);
            let at = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'@' as i8));
            let mask = |m| u64::from(_mm256_movemask_epi8(m) as u32) << (32 * k);
            c.word |= mask(word);
            c.digit |= mask(digit);
            c.at |= mask(at);
        }
        c
    }

    /// # Safety
    /// `block` is 64 bytes long.
    pub(super) unsafe fn sse2(block: &[u8]) -> Classes {
        let mut c = Classes::default();
        for k in 0..4 {
            // SAFETY: the load reads block[16k..16k + 16], in bounds for a 64-byte block.
            let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k) as *const __m128i) };
            let digit = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(0x50)), _mm_set1_epi8(-118));
            let lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
            let alpha = _mm_cmplt_epi8(
                _mm_add_epi8(lower, _mm_set1_epi8(0x1f)),
                _mm_set1_epi8(-102),
            );
            let under = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'_' as i8));
            let word = _mm_or_si128(_mm_or_si128(digit, alpha), under);
            let at = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'@' as i8));
            let mask = |m| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
            c.word |= mask(word);
            c.digit |= mask(digit);
            c.at |= mask(at);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_byte_blocks() -> Vec<Vec<u8>> {
        let mut all: Vec<u8> = (0..=255u8).collect();
        all.extend_from_slice(b"0123456789@/:;?`_[{azAZ");
        let mixed: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(i))
            .collect();
        all.chunks(64)
            .chain([mixed.as_slice()])
            .map(|c| {
                let mut b = c.to_vec();
                b.resize(64, b'x');
                b
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_vector_classifiers_agree_with_the_scalar_one() {
        for b in every_byte_blocks() {
            let want = scalar(&b);
            // SAFETY: 64-byte block; AVX2 only when detected.
            unsafe {
                assert_eq!(x86::sse2(&b), want);
                if std::is_x86_feature_detected!("avx2") {
                    assert_eq!(x86::avx2(&b), want);
                }
            }
        }
    }

    #[test]
    fn block_masks_match_scalar() {
        let text: Vec<u8> = (0..300u32)
            .map(|i| b"ab 9@x0-1234567890 @@ zz..._Q"[(i * 7 % 29) as usize])
            .collect();
        for base in 0..text.len() {
            let c = classify64(&text, base);
            for k in 0..64 {
                let b = text.get(base + k).copied();
                let is = |m: u64| m >> k & 1 == 1;
                assert_eq!(is(c.digit), b.is_some_and(|b| b.is_ascii_digit()));
                assert_eq!(is(c.at), b == Some(b'@'));
                assert_eq!(
                    is(c.word),
                    b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                );
            }
        }
    }
}
