//! Wikipedia XML dumps (`pages-articles*.xml`, optionally `.bz2`): one article at a time, streamed.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use quick_xml::events::Event;
use quick_xml::Reader;

/// One page of the dump.
#[derive(Debug, Default)]
struct Page {
    namespace: Option<String>,
    text: String,
    redirect: bool,
}

/// Which element's text is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Namespace,
    Text,
}

/// Calls `article` with the wikitext of every main-namespace, non-redirect page, in dump order.
/// A dump that ends inside a page (a truncated download) is an error, never a short corpus.
pub fn for_each_article(
    input: impl BufRead,
    mut article: impl FnMut(&str) -> Result<()>,
) -> Result<usize> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    let mut buffer = Vec::new();
    let mut page: Option<Page> = None;
    let mut field = Field::None;
    let mut articles = 0;
    let mut depth = 0usize;
    loop {
        let event = reader.read_event_into(&mut buffer).with_context(|| {
            format!(
                "the dump is truncated or corrupt: XML error at byte {}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(start) => {
                depth += 1;
                match start.local_name().as_ref() {
                    b"page" => page = Some(Page::default()),
                    b"ns" => field = Field::Namespace,
                    b"text" => field = Field::Text,
                    b"redirect" => mark_redirect(&mut page),
                    _ => {}
                }
            }
            Event::Empty(empty) if empty.local_name().as_ref() == b"redirect" => {
                mark_redirect(&mut page)
            }
            Event::Text(text) if field != Field::None => {
                let decoded = text.decode().context("invalid text encoding")?;
                push_field(&mut page, field, &decoded);
            }
            Event::GeneralRef(reference) if field != Field::None => {
                if let Some(c) = reference
                    .resolve_char_ref()
                    .context("invalid character reference")?
                {
                    push_field(&mut page, field, c.encode_utf8(&mut [0; 4]));
                } else {
                    let name = reference.decode().context("invalid entity")?;
                    let resolved = match name.as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        _ => "",
                    };
                    push_field(&mut page, field, resolved);
                }
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                match end.local_name().as_ref() {
                    b"ns" | b"text" => field = Field::None,
                    b"page" => {
                        if let Some(page) = page.take() {
                            let main_namespace =
                                page.namespace.as_deref().is_none_or(|ns| ns.trim() == "0");
                            if main_namespace && !page.redirect && !page.text.trim().is_empty() {
                                article(&page.text)?;
                                articles += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => {
                if page.is_some() || depth > 0 {
                    bail!("the dump ends before its closing tags: the file is truncated");
                }
                return Ok(articles);
            }
            _ => {}
        }
        buffer.clear();
    }
}

fn mark_redirect(page: &mut Option<Page>) {
    if let Some(page) = page {
        page.redirect = true;
    }
}

fn push_field(page: &mut Option<Page>, field: Field, text: &str) {
    let Some(page) = page else { return };
    match field {
        Field::Namespace => page
            .namespace
            .get_or_insert_with(String::new)
            .push_str(text),
        Field::Text => page.text.push_str(text),
        Field::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Zurich</title><ns>0</ns><revision><text xml:space="preserve">'''Zurich''' is a city &amp; a canton.</text></revision></page>
  <page><title>Talk:Zurich</title><ns>1</ns><revision><text>talk page</text></revision></page>
  <page><title>Zuerich</title><ns>0</ns><redirect title="Zurich" /><revision><text>#REDIRECT [[Zurich]]</text></revision></page>
  <page><title>Bern</title><ns>0</ns><revision><text>Bern &lt;ref&gt;x&lt;/ref&gt; is the capital.</text></revision></page>
</mediawiki>"#;

    #[test]
    fn yields_main_namespace_articles_only() {
        let mut seen = Vec::new();
        let count = for_each_article(DUMP.as_bytes(), |text| {
            seen.push(text.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            seen,
            [
                "'''Zurich''' is a city & a canton.",
                "Bern <ref>x</ref> is the capital."
            ]
        );
    }

    #[test]
    fn a_truncated_dump_is_an_error() {
        let truncated = &DUMP[..DUMP.find("<title>Bern").unwrap() + 20];
        let error = for_each_article(truncated.as_bytes(), |_| Ok(())).unwrap_err();
        assert!(format!("{error:#}").contains("truncated"), "{error:#}");
    }
}
