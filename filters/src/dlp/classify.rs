//! Byte classes of 64-byte blocks (digits, `@`), vectorised: the seeds of the digit-led PII
//! detectors and of e-mail addresses.

/// Bit masks of the digits and of the `@`s in the 64 bytes from `base` (bit k: `base + k`;
/// bytes past the end count as neither).
#[inline]
pub(super) fn classify64(hay: &[u8], base: usize) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if base + 64 <= hay.len() {
        let block = &hay[base..base + 64];
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked above).
            return unsafe { x86::classify64_avx2(block) };
        }
        // SAFETY: SSE2 is part of the x86_64 baseline.
        return unsafe { x86::classify64_sse2(block) };
    }
    let (mut digits, mut ats) = (0u64, 0u64);
    for (k, &b) in hay[base..hay.len().min(base + 64)].iter().enumerate() {
        digits |= u64::from(b.is_ascii_digit()) << k;
        ats |= u64::from(b == b'@') << k;
    }
    (digits, ats)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    // A byte is a digit when `b + 0x50` (wrapping) is below -118 as a signed byte: that maps
    // b'0'..=b'9' onto -128..=-119, one add and one compare per vector.

    /// # Safety
    /// `block` is 64 bytes long and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn classify64_avx2(block: &[u8]) -> (u64, u64) {
        debug_assert_eq!(block.len(), 64);
        let shift = _mm256_set1_epi8(0x50);
        let limit = _mm256_set1_epi8(-118);
        let at = _mm256_set1_epi8(b'@' as i8);
        let (mut digits, mut ats) = (0u64, 0u64);
        for k in 0..2 {
            // SAFETY: the load reads block[32k..32k + 32], in bounds for a 64-byte block.
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k) as *const __m256i) };
            let d = _mm256_cmpgt_epi8(limit, _mm256_add_epi8(v, shift));
            digits |= u64::from(_mm256_movemask_epi8(d) as u32) << (32 * k);
            ats |= u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, at)) as u32) << (32 * k);
        }
        (digits, ats)
    }

    /// # Safety
    /// `block` is 64 bytes long.
    pub(super) unsafe fn classify64_sse2(block: &[u8]) -> (u64, u64) {
        debug_assert_eq!(block.len(), 64);
        let shift = _mm_set1_epi8(0x50);
        let limit = _mm_set1_epi8(-118);
        let at = _mm_set1_epi8(b'@' as i8);
        let (mut digits, mut ats) = (0u64, 0u64);
        for k in 0..4 {
            // SAFETY: the load reads block[16k..16k + 16], in bounds for a 64-byte block.
            let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k) as *const __m128i) };
            let d = _mm_cmplt_epi8(_mm_add_epi8(v, shift), limit);
            digits |= u64::from(_mm_movemask_epi8(d) as u16) << (16 * k);
            ats |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, at)) as u16) << (16 * k);
        }
        (digits, ats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_vector_classifiers_agree() {
        let block: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(i))
            .collect();
        let mut all: Vec<u8> = (0..=255u8).collect();
        all.extend_from_slice(b"0123456789@/:;?`");
        for chunk in all.chunks(64).chain([block.as_slice()]) {
            let mut b = chunk.to_vec();
            b.resize(64, b'x');
            let want = classify64(&b[..63], 0);
            let want = (
                want.0 | u64::from(b[63].is_ascii_digit()) << 63,
                want.1 | u64::from(b[63] == b'@') << 63,
            );
            // SAFETY: 64-byte block; AVX2 only when detected.
            unsafe {
                assert_eq!(x86::classify64_sse2(&b), want);
                if std::is_x86_feature_detected!("avx2") {
                    assert_eq!(x86::classify64_avx2(&b), want);
                }
            }
        }
    }

    #[test]
    fn block_masks_match_scalar() {
        let text: Vec<u8> = (0..300u32)
            .map(|i| b"ab 9@x0-1234567890 @@ zz..."[(i * 7 % 27) as usize])
            .collect();
        for base in 0..text.len() {
            let (digits, ats) = classify64(&text, base);
            for k in 0..64 {
                let b = text.get(base + k).copied();
                assert_eq!(digits >> k & 1 == 1, b.is_some_and(|b| b.is_ascii_digit()));
                assert_eq!(ats >> k & 1 == 1, b == Some(b'@'));
            }
        }
    }
}
