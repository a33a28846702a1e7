//! Turning client text into plain text.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The characters that make the HTML parser change text: markup starts with
/// `<` and entities with `&`, and the parser turns `\r` into `\n`. Text
/// without any of them parses to itself (NUL and other controls included:
/// the property tests below find the difference if one is left out).
const PARSER_SENSITIVE: [char; 3] = ['<', '&', '\r'];

/// The sanitizer, built once: building one fills hash tables of tags and
/// attributes, and at 3,000 chats/s those inserts and their hashing were
/// about 7 % of the moderator's profile.
static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder.clean_content_tags(HashSet::from(["script", "style"]));
    builder
});

/// Strips every HTML tag, drops the content of `script` and `style`, and
/// returns plain text (entities decoded) without bidirectional controls or
/// invisible characters ([`schemas::text`]). Clients render the result as
/// text, never as HTML, so a `<` that survives is harmless there.
///
/// Most chat is plain text: without [`PARSER_SENSITIVE`] characters the
/// HTML parser would return it unchanged, so it is skipped (the property
/// tests below check that both paths agree).
pub fn plain_text(input: &str) -> String {
    if input.contains(PARSER_SENSITIVE) {
        parsed_plain_text(input)
    } else {
        schemas::text::without_spoofing(input)
    }
}

/// [`plain_text`] through the HTML parser, whatever the input.
fn parsed_plain_text(input: &str) -> String {
    let html = SANITIZER.clean(input).to_string();
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

    /// Plain text with the characters parsers treat specially nearby:
    /// quotes, `>`, whitespace of every kind, controls, non-characters.
    fn plain() -> impl proptest::strategy::Strategy<Value = String> {
        "[a-z \"'>=/;#\t\n\u{0b}\u{0c}\u{85}\u{a0}\u{0}-\u{1f}\u{7f}\u{fdd0}\u{fffe}\u{feff}\u{200b}\u{202e}\u{d7ff}\u{e000}\u{10ffff}]{0,40}"
    }

    proptest::proptest! {
        /// Skipping the parser changes nothing: both paths give the same
        /// text for any input, plain or not.
        #[test]
        fn skipping_the_parser_gives_what_the_parser_gives(input in plain()) {
            proptest::prop_assert_eq!(plain_text(&input), parsed_plain_text(&input));
        }

        #[test]
        fn skipping_the_parser_gives_what_the_parser_gives_for_any_string(
            input in proptest::prelude::any::<String>()
        ) {
            proptest::prop_assert_eq!(plain_text(&input), parsed_plain_text(&input));
        }


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
