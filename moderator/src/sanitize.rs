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

    /// Markup-heavy input: tags, entities and text mixed, nested at random.
    fn markup() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("<b>".to_owned()),
            Just("</b>".to_owned()),
            Just("<script>".to_owned()),
            Just("</script>".to_owned()),
            Just("<style>".to_owned()),
            Just("<img src=x onerror=alert(1)>".to_owned()),
            Just("<!--".to_owned()),
            Just("-->".to_owned()),
            Just("<![CDATA[".to_owned()),
            Just("&lt;".to_owned()),
            Just("&amp;".to_owned()),
            Just("&#x202E;".to_owned()),
            Just("&#0;".to_owned()),
            Just("&#xD800;".to_owned()),
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("&".to_owned()),
            ".{0,8}",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        /// Whatever a client sends, the moderator answers: the sanitizer
        /// never panics, and what it keeps carries no character that could
        /// spoof other text.
        #[test]
        fn any_input_gives_plain_text_without_spoofing(input in proptest::prelude::any::<String>()) {
            let out = plain_text(&input);
            proptest::prop_assert!(!out.chars().any(schemas::text::is_spoofing_char));
        }

        #[test]
        fn markup_gives_plain_text_without_spoofing_or_scripts(input in markup()) {
            let out = plain_text(&input);
            proptest::prop_assert!(!out.chars().any(schemas::text::is_spoofing_char));
            proptest::prop_assert_eq!(plain_text(&out).contains("<script"), false, "{:?} -> {:?}", input, out);
        }
    }
}
