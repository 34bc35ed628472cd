//! Self-contained HTML reports: one file, inline CSS, inline SVG charts, no script and nothing
//! fetched when it is opened.

mod chaos;
pub mod charts;
pub mod reports;

use std::fmt::Write as _;

/// An HTML page being put together.
#[derive(Debug, Default)]
pub struct Page {
    title: String,
    body: String,
    /// Every chart's SVG document and caption, in page order.
    charts: Vec<(String, String)>,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

impl Page {
    /// An empty page.
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }

    /// A section heading.
    pub fn heading(&mut self, text: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", esc(text));
    }

    /// A paragraph of text.
    pub fn paragraph(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p>{}</p>", esc(text));
    }

    /// Text kept as typed (a command line).
    pub fn code(&mut self, text: &str) {
        let _ = writeln!(self.body, "<pre>{}</pre>", esc(text));
    }

    /// A two-column table of names and values.
    pub fn pairs(&mut self, rows: &[(&str, String)]) {
        self.body.push_str("<table class=\"kv\">\n");
        for (k, v) in rows {
            let _ = writeln!(self.body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        self.body.push_str("</table>\n");
    }

    /// A table with a header row.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.body.push_str("<table>\n<tr>");
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr>\n");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let _ = write!(self.body, "<td>{}</td>", esc(c));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</table>\n");
    }

    /// A chart (an SVG document from [`charts`]) with a caption.
    pub fn chart(&mut self, svg: &str, caption: &str) {
        self.charts.push((svg.to_owned(), caption.to_owned()));
        // The SVG backend writes a standalone document; inline, only the <svg> element is
        // wanted.
        let start = svg.find("<svg").unwrap_or(0);
        let _ = writeln!(
            self.body,
            "<figure class=\"chart\">{}<figcaption>{}</figcaption></figure>",
            &svg[start..],
            esc(caption)
        );
    }

    /// Charts on the page so far.
    pub fn chart_count(&self) -> usize {
        self.charts.len()
    }

    /// Every chart as a standalone SVG document with a file name (`01-latency-by-percentile.svg`),
    /// for pages that want a chart on its own (a README).
    pub fn svg_files(&self) -> Vec<(String, String)> {
        self.charts
            .iter()
            .enumerate()
            .map(|(i, (svg, _))| {
                // The chart's own title is its first text element.
                let title = svg
                    .split("<text")
                    .nth(1)
                    .and_then(|t| t.split_once('>'))
                    .map(|(_, rest)| rest.split('<').next().unwrap_or("").trim())
                    .unwrap_or("chart");
                let slug: String = title
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect::<String>()
                    .split('-')
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join("-");
                (format!("{:02}-{slug}.svg", i + 1), svg.clone())
            })
            .collect()
    }

    /// The whole document.
    pub fn render(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
             <h1>{title}</h1>\n{body}<footer>sealpost-loadtest {version}</footer>\n</body>\n</html>\n",
            title = esc(&self.title),
            body = self.body,
            version = env!("CARGO_PKG_VERSION"),
        )
    }
}

const STYLE: &str =
    "body { font-family: sans-serif; max-width: 920px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
table.kv th { text-align: left; background: #f4f4f4; }
pre { background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; }
figure.chart { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
footer { margin-top: 3em; font-size: 0.8em; color: #777; }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_page_is_self_contained() {
        let mut p = Page::new("a <b> & c");
        p.paragraph("x < y");
        p.pairs(&[("k", "\"v\"".into())]);
        let html = p.render();
        assert!(html.contains("<title>a &lt;b&gt; &amp; c</title>"));
        assert!(html.contains("x &lt; y") && html.contains("&quot;v&quot;"));
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("<script")
        );
    }
}
