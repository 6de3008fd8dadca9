package knowledge

import (
	"bytes"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/ledongthuc/pdf"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"

	"github.com/maas-platform/maas/pkg/textcheck"
)

// extractError is a file that cannot be ingested, with OpenAI's last_error code.
type extractError struct {
	Code    string
	Message string
}

func (e *extractError) Error() string { return e.Code + ": " + e.Message }

// textExtensions are read as plain text (markdown included: its markup is harmless to both
// the embedding and the full-text index).
var textExtensions = map[string]bool{
	".txt": true, ".text": true, ".md": true, ".markdown": true, ".rst": true, ".csv": true, ".tsv": true,
	".json": true, ".jsonl": true, ".xml": true, ".yaml": true, ".yml": true, ".log": true, ".tex": true,
	".go": true, ".py": true, ".js": true, ".ts": true, ".java": true, ".c": true, ".h": true, ".cpp": true,
	".cs": true, ".rb": true, ".php": true, ".sh": true, ".css": true, ".sql": true, ".rs": true, ".kt": true,
}

// extract returns the text of a file named name: plain text and markdown as they are,
// html without markup (script and style dropped, blocks on their own lines), pdf through
// its text operators (github.com/ledongthuc/pdf). Anything else that is valid UTF-8
// without NUL bytes is read as text. Control characters but tab and newlines are dropped
// from the result.
func extract(name string, data []byte) (string, error) {
	ext := strings.ToLower(path.Ext(name))
	var text string
	switch {
	case ext == ".pdf" || bytes.HasPrefix(data, []byte("%PDF-")):
		t, err := extractPDF(data)
		if err != nil {
			return "", err
		}
		text = t
	case ext == ".html" || ext == ".htm" || ext == ".xhtml" || (ext == "" && looksHTML(data)):
		if !utf8.Valid(data) {
			return "", &extractError{CodeInvalidFile, "the html file is not valid UTF-8"}
		}
		text = extractHTML(data)
	case textExtensions[ext] || ext == "" || isText(data):
		if !isText(data) {
			if textExtensions[ext] {
				return "", &extractError{CodeInvalidFile, fmt.Sprintf("the %s file is not valid UTF-8 text", ext)}
			}
			return "", &extractError{CodeUnsupportedFile, "the file is neither text, markdown, html nor pdf"}
		}
		text = string(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")))
	default:
		return "", &extractError{CodeUnsupportedFile, fmt.Sprintf("files of type %s are not supported (text, markdown, html and pdf are)", ext)}
	}
	// Whatever the branch, the text is stored: PostgreSQL refuses NUL and invalid UTF-8,
	// which html (raw NUL) and pdf (a \000 under WinAnsiEncoding) can yield.
	text = textcheck.Clean(text)
	if strings.TrimSpace(text) == "" {
		return "", &extractError{CodeInvalidFile, "no text could be extracted from the file"}
	}
	return text, nil
}

func isText(b []byte) bool { return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 }

func looksHTML(b []byte) bool {
	head := strings.ToLower(strings.TrimSpace(string(b[:min(len(b), 512)])))
	return strings.HasPrefix(head, "<!doctype html") || strings.HasPrefix(head, "<html")
}

var blockAtoms = map[atom.Atom]bool{
	atom.P: true, atom.Div: true, atom.Br: true, atom.Li: true, atom.Tr: true, atom.H1: true, atom.H2: true,
	atom.H3: true, atom.H4: true, atom.H5: true, atom.H6: true, atom.Section: true, atom.Article: true,
	atom.Blockquote: true, atom.Pre: true, atom.Table: true, atom.Ul: true, atom.Ol: true, atom.Title: true,
	atom.Header: true, atom.Footer: true, atom.Dd: true, atom.Dt: true, atom.Td: true, atom.Th: true,
}

func extractHTML(data []byte) string {
	z := html.NewTokenizer(bytes.NewReader(data))
	var b strings.Builder
	skip := 0
	for {
		switch z.Next() {
		case html.ErrorToken:
			return strings.TrimSpace(b.String())
		case html.StartTagToken, html.SelfClosingTagToken:
			tn, _ := z.TagName()
			a := atom.Lookup(tn)
			switch a {
			case atom.Script, atom.Style, atom.Noscript, atom.Template, atom.Svg:
				if tt := z.Token(); tt.Type == html.StartTagToken {
					skip++
				}
				continue
			}
			if blockAtoms[a] {
				b.WriteByte('\n')
			}
		case html.EndTagToken:
			tn, _ := z.TagName()
			a := atom.Lookup(tn)
			switch a {
			case atom.Script, atom.Style, atom.Noscript, atom.Template, atom.Svg:
				if skip > 0 {
					skip--
				}
				continue
			}
			if blockAtoms[a] {
				b.WriteByte('\n')
			}
		case html.TextToken:
			if skip > 0 {
				continue
			}
			t := strings.Join(strings.Fields(string(z.Text())), " ")
			if t != "" {
				if b.Len() > 0 {
					last := b.String()[b.Len()-1]
					if last != '\n' && last != ' ' {
						b.WriteByte(' ')
					}
				}
				b.WriteString(t)
			}
		}
	}
}

// extractPDF reads the text of every page. The parser panics on some malformed input: a
// panic is a corrupt file, not a crash.
func extractPDF(data []byte) (text string, err error) {
	defer func() {
		if r := recover(); r != nil {
			text, err = "", &extractError{CodeInvalidFile, "the pdf file is malformed and could not be read"}
		}
	}()
	r, err := pdf.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		msg := "the pdf file is malformed and could not be read"
		if strings.Contains(err.Error(), "encrypt") || strings.Contains(err.Error(), "password") {
			msg = "the pdf file is encrypted"
		}
		return "", &extractError{CodeInvalidFile, msg}
	}
	var b strings.Builder
	for i := 1; i <= r.NumPage(); i++ {
		p := r.Page(i)
		if p.V.IsNull() {
			continue
		}
		t, err := p.GetPlainText(nil)
		if err != nil {
			return "", &extractError{CodeInvalidFile, fmt.Sprintf("page %d of the pdf file could not be read", i)}
		}
		b.WriteString(t)
		b.WriteByte('\n')
	}
	return b.String(), nil
}
