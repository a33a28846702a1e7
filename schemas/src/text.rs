//! What of a user's text may reach other users' screens.
//!
//! Chat text and display names are shown to everyone in a room, so
//! characters that change how *other* text looks are removed: the
//! bidirectional overrides and isolates that can make `exe.txt` read as
//! `txt.exe` or reverse a name, and the invisible zero-width characters
//! that make two names look alike. The zero-width joiner and non-joiner
//! stay: emoji sequences and several scripts (Persian, the Indic scripts)
//! need them.

/// Whether `c` is a bidirectional control or an invisible zero-width
/// character that text shown to others must not carry.
pub fn is_spoofing_char(c: char) -> bool {
    matches!(
        c,
        // Bidirectional embeddings, overrides and their terminator.
        '\u{202A}'..='\u{202E}'
        // Bidirectional isolates.
        | '\u{2066}'..='\u{2069}'
        // Direction marks (left-to-right, right-to-left, Arabic letter).
        | '\u{200E}' | '\u{200F}' | '\u{061C}'
        // Zero-width space, word joiner and invisible operators, byte
        // order mark, Mongolian vowel separator.
        | '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}'
    )
}

/// `text` without spoofing characters and without control characters other
/// than line breaks and tabs.
pub fn without_spoofing(text: &str) -> String {
    text.chars()
        .filter(|&c| !is_spoofing_char(c) && (!c.is_control() || c == '\n' || c == '\t'))
        .collect()
}

/// Whether `text` shows nothing: only whitespace and joiners.
pub fn is_blank(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_whitespace() || c == '\u{200C}' || c == '\u{200D}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofing_and_control_characters_are_removed() {
        const CASES: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("invoice\u{202E}fdp.exe", "invoicefdp.exe"),
            ("a\u{2066}b\u{2069}c", "abc"),
            ("ad\u{200B}min", "admin"),
            ("\u{FEFF}bom", "bom"),
            ("mark\u{200F}s\u{200E}", "marks"),
            ("bell\u{7}", "bell"),
            ("two\nlines\tand tab", "two\nlines\tand tab"),
            // A family emoji is three emoji joined by U+200D.
            ("👨\u{200D}👩\u{200D}👧", "👨\u{200D}👩\u{200D}👧"),
            ("می\u{200C}خواهم", "می\u{200C}خواهم"),
        ];
        for (input, expected) in CASES {
            assert_eq!(without_spoofing(input), *expected, "input {input:?}");
        }
    }

    #[test]
    fn blank_text_shows_nothing() {
        for blank in ["", " \n\t", "\u{200D}", " \u{200C} "] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for shown in ["a", " . ", "👨\u{200D}👩"] {
            assert!(!is_blank(shown), "{shown:?}");
        }
    }
}
