//! Turning client text into plain text.

use std::collections::HashSet;

/// Strips every HTML tag, drops the content of `script` and `style`, and
/// returns plain text (entities decoded) without bidirectional controls or
/// invisible characters ([`schemas::text`]). Clients render the result as
/// text, never as HTML, so a `<` that survives is harmless there.
pub fn plain_text(input: &str) -> String {
    let html = ammonia::Builder::empty()
        .clean_content_tags(HashSet::from(["script", "style"]))
        .clean(input)
        .to_string();
    schemas::text::without_spoofing(&html_escape::decode_html_entities(&html))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_markup_and_keeps_text() {
        const CASES: &[(&str, &str)] = &[
            ("hello", "hello"),
            ("<b>bold</b> move", "bold move"),
            ("<script>alert(1)</script>hi", "hi"),
            ("<style>body{}</style>text", "text"),
            ("<img src=x onerror=alert(1)>", ""),
            ("<a href=\"javascript:alert(1)\">link</a>", "link"),
            ("1 < 2 && 3 > 2", "1 < 2 && 3 > 2"),
            ("Tom & Jerry's \"show\"", "Tom & Jerry's \"show\""),
            ("unicode ✓ émoji 🎉", "unicode ✓ émoji 🎉"),
            ("<scr<script>ipt>alert(1)</script>", "ipt&gt;alert(1)"),
            ("file\u{202E}txt.exe", "filetxt.exe"),
            ("&#x202E;decoded too", "decoded too"),
            ("\u{200B}", ""),
        ];
        for (input, expected) in CASES {
            let out = plain_text(input);
            // The last case shows why clients must render as text: what is left
            // is harmless characters, decoded once.
            let expected = html_escape::decode_html_entities(expected);
            assert_eq!(out, expected, "input {input:?}");
            assert!(
                !out.contains("<script"),
                "input {input:?} kept a script tag"
            );
        }
    }
}
