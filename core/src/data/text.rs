//! Text of the corpus: Wikipedia markup to plain article text (what WikiExtractor keeps), whitespace
//! normalisation, and sentence segmentation (Wikimedia's `sentencex`, rule-based with abbreviation
//! lists; NLTK's Punkt in the reference).

/// Sentences of a document's text, trimmed, empty ones dropped.
pub fn split_sentences(text: &str) -> Vec<String> {
    sentencex::segment("en", text)
        .into_iter()
        .map(collapse_whitespace)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs of whitespace (newlines included) to single spaces, trimmed: a document on one line.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Plain article text from the wikitext of a page, as WikiExtractor produces it for BERT corpora:
/// no templates, tables, references, comments, tags, files, categories, headings or list items;
/// links replaced by their label; bold/italic quotes dropped; entities decoded. Paragraphs are kept
/// on separate lines.
pub fn wikitext_to_plain(wikitext: &str) -> String {
    let text = decode_entities(wikitext);
    let text = remove_between(&text, "<!--", "-->");
    let text = remove_nested(&text, "{{", "}}");
    let text = remove_nested(&text, "{|", "|}");
    let text = remove_references(&text);
    let text = replace_links(&text);
    let text = replace_external_links(&text);
    let text = strip_tags(&text);
    let text = text.replace("'''", "").replace("''", "");
    text.lines()
        .map(str::trim)
        .filter(|line| !is_structural_line(line))
        .map(collapse_whitespace)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Headings, list items, indented lines, horizontal rules and table/template leftovers.
fn is_structural_line(line: &str) -> bool {
    line.starts_with('=')
        || line.starts_with('*')
        || line.starts_with('#')
        || line.starts_with(':')
        || line.starts_with(';')
        || line.starts_with('|')
        || line.starts_with('!')
        || line.starts_with("----")
        || line.starts_with("__")
}

/// The five XML entities plus the common HTML ones in article text.
fn decode_entities(text: &str) -> String {
    const ENTITIES: [(&str, &str); 9] = [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&apos;", "'"),
        ("&nbsp;", " "),
        ("&ndash;", "\u{2013}"),
        ("&mdash;", "\u{2014}"),
        ("&hellip;", "\u{2026}"),
        ("&amp;", "&"),
    ];
    if !text.contains('&') {
        return text.to_string();
    }
    let mut decoded = text.to_string();
    for (entity, replacement) in ENTITIES {
        decoded = decoded.replace(entity, replacement);
    }
    decoded
}

/// Removes every `open ... close` span (not nested).
fn remove_between(text: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        out.push_str(&rest[..start]);
        match rest[start + open.len()..].find(close) {
            Some(end) => rest = &rest[start + open.len() + end + close.len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Removes `open ... close` spans that may nest (`{{a {{b}} c}}`); an unclosed span runs to the end.
fn remove_nested(text: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(open) {
            depth += 1;
            i += open.len();
        } else if depth > 0 && rest.starts_with(close) {
            depth -= 1;
            i += close.len();
        } else {
            let c = rest
                .chars()
                .next()
                .expect("i is a char boundary inside text");
            if depth == 0 {
                out.push(c);
            }
            i += c.len_utf8();
        }
    }
    out
}

/// `<ref ...>...</ref>` and self-closing `<ref ... />`.
fn remove_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<ref") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(tag_end) = after.find('>') else {
            return out;
        };
        if after[..tag_end].ends_with('/') {
            rest = &after[tag_end + 1..];
            continue;
        }
        match after.find("</ref>") {
            Some(end) => rest = &after[end + "</ref>".len()..],
            None => rest = &after[tag_end + 1..],
        }
    }
    out.push_str(rest);
    out
}

/// Namespaces whose links are not running text.
const DROPPED_LINK_NAMESPACES: [&str; 5] = ["file:", "image:", "category:", "media:", "wikipedia:"];

/// `[[target|label]]` to `label`, `[[target]]` to `target`; file, image and category links go.
fn replace_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        out.push_str(&rest[..start]);
        let inner_start = start + 2;
        // Find the matching "]]", allowing links nested inside file captions.
        let mut depth = 1;
        let mut j = inner_start;
        let bytes = rest.as_bytes();
        while j + 1 < bytes.len() && depth > 0 {
            if bytes[j] == b'[' && bytes[j + 1] == b'[' {
                depth += 1;
                j += 2;
            } else if bytes[j] == b']' && bytes[j + 1] == b']' {
                depth -= 1;
                j += 2;
            } else {
                j += 1;
            }
        }
        if depth > 0 {
            // Unclosed link: keep the text as is.
            out.push_str(&rest[start..]);
            return out;
        }
        let inner = &rest[inner_start..j - 2];
        let lower = inner.trim_start().to_lowercase();
        if !DROPPED_LINK_NAMESPACES
            .iter()
            .any(|ns| lower.starts_with(ns))
        {
            let label = inner.rsplit('|').next().unwrap_or(inner);
            out.push_str(&replace_links(label));
        }
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// `[http://example.org label]` to `label`; bare bracketed URLs go.
fn replace_external_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[http") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(']') {
            Some(end) => {
                let inner = &after[..end];
                if let Some((_, label)) = inner.split_once(' ') {
                    out.push_str(label);
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Drops remaining HTML-like tags (`<small>`, `<br/>`, `<math>...`) but keeps their text.
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let looks_like_tag = after[1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/');
        match after.find('>') {
            Some(end) if looks_like_tag => rest = &after[end + 1..],
            _ => {
                out.push('<');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_but_not_abbreviations() {
        let sentences = split_sentences(
            "Dr. Smith arrived in the U.S. on Monday. He met Mr. Jones at 5 p.m. sharp!  Was it late?",
        );
        assert_eq!(
            sentences,
            [
                "Dr. Smith arrived in the U.S. on Monday.",
                "He met Mr. Jones at 5 p.m. sharp!",
                "Was it late?"
            ]
        );
    }

    #[test]
    fn wikitext_becomes_running_text() {
        let wikitext = "{{Infobox city|name=Zurich|pop={{formatnum:400000}}}}\n\
            '''Zürich''' is the largest city in [[Switzerland]] and the capital of the \
            [[Canton of Zürich|canton of Zürich]].<ref name=\"a\">Source {{cite}}</ref> It lies on \
            [[Lake Zurich]].<ref>x</ref>\n\
            == History ==\n\
            [[File:Zurich.jpg|thumb|The [[old town]] at night]]\n\
            * a list item\n\
            {| class=\"wikitable\"\n| cell\n|}\n\
            The city &amp; its <small>people</small> speak German.<!-- hidden -->\n\
            See [http://example.org the site] and [http://bare.example].\n\
            [[Category:Cities]]";
        let plain = wikitext_to_plain(wikitext);
        assert_eq!(
            plain,
            "Zürich is the largest city in Switzerland and the capital of the canton of Zürich. \
             It lies on Lake Zurich.\n\
             The city & its people speak German.\n\
             See the site and ."
        );
    }

    #[test]
    fn unclosed_markup_does_not_swallow_or_panic() {
        assert_eq!(
            wikitext_to_plain("Text [[unclosed link"),
            "Text [[unclosed link"
        );
        assert_eq!(wikitext_to_plain("Before {{never closed"), "Before");
        assert_eq!(wikitext_to_plain("a < b and c > d"), "a < b and c > d");
    }
}
