//! Field limits the events.k8s.io/v1 API server enforces. An event over a limit is rejected whole
//! (422), so the sink trims instead of losing the event.

/// `reason`, `action`, `reportingController` and `reportingInstance` are at most 128 bytes.
pub const MAX_SHORT_FIELD: usize = 128;
/// `note` is at most 1 kB.
pub const MAX_NOTE: usize = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…` so a reader
/// knows the text went on.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const MARK: &str = "…";
    let budget = max.saturating_sub(MARK.len());
    let mut end = budget;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + MARK.len());
    out.push_str(&s[..end]);
    if max >= MARK.len() {
        out.push_str(MARK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_is() {
        assert_eq!(
            truncate("fine", 8),
            "fine",
            "text within the limit must not change"
        );
        assert_eq!(
            truncate("12345678", 8),
            "12345678",
            "text at the limit must not change"
        );
    }

    #[test]
    fn long_text_is_cut_to_the_limit_with_a_mark() {
        let out = truncate(&"a".repeat(2000), MAX_NOTE);
        assert_eq!(
            out.len(),
            MAX_NOTE,
            "cut text must be exactly the limit in bytes"
        );
        assert!(
            out.ends_with('…'),
            "cut text must end with the ellipsis mark"
        );
    }

    #[test]
    fn cut_never_splits_a_multibyte_character() {
        // 'é' is two bytes: any odd budget falls inside one.
        for max in 4..40 {
            let out = truncate(&"é".repeat(50), max);
            assert!(
                out.len() <= max,
                "{max}: result {} bytes over the limit",
                out.len()
            );
            assert!(out.ends_with('…'), "{max}: cut must be marked");
        }
    }

    #[test]
    fn limit_smaller_than_the_mark_still_respects_the_limit() {
        assert_eq!(truncate("abcdef", 2), "", "no room for text nor mark");
    }
}
