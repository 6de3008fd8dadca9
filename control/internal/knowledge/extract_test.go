package knowledge

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/maas-platform/maas/pkg/textcheck"
)

var update = flag.Bool("update", false, "rewrite testdata/sample.pdf")

// makePDF writes a one-page pdf showing lines in Helvetica, with a correct xref table.
func makePDF(lines []string) []byte {
	var content strings.Builder
	content.WriteString("BT /F1 12 Tf 72 720 Td 16 TL\n")
	for _, l := range lines {
		fmt.Fprintf(&content, "(%s) Tj T*\n", strings.NewReplacer(`\`, `\\`, "(", `\(`, ")", `\)`).Replace(l))
	}
	content.WriteString("ET\n")
	objs := []string{
		"<< /Type /Catalog /Pages 2 0 R >>",
		"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
		"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
		fmt.Sprintf("<< /Length %d >>\nstream\n%sendstream", content.Len(), content.String()),
		"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
	}
	var b bytes.Buffer
	b.WriteString("%PDF-1.4\n")
	offsets := make([]int, len(objs))
	for i, o := range objs {
		offsets[i] = b.Len()
		fmt.Fprintf(&b, "%d 0 obj\n%s\nendobj\n", i+1, o)
	}
	xref := b.Len()
	fmt.Fprintf(&b, "xref\n0 %d\n0000000000 65535 f \n", len(objs)+1)
	for _, off := range offsets {
		fmt.Fprintf(&b, "%010d 00000 n \n", off)
	}
	fmt.Fprintf(&b, "trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n", len(objs)+1, xref)
	return b.Bytes()
}

var sampleLines = []string{"Volcanic soil in the Azores grows pineapples under glass.", "The greenhouses are heated by geothermal steam."}

// TestSamplePDF keeps testdata/sample.pdf (used by the service's end-to-end test) equal to
// what makePDF writes; -update rewrites it.
func TestSamplePDF(t *testing.T) {
	want := makePDF(sampleLines)
	if *update {
		if err := os.WriteFile("testdata/sample.pdf", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("testdata/sample.pdf")
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("testdata/sample.pdf is stale (run go test -run TestSamplePDF -update): %v", err)
	}
}

func TestExtract(t *testing.T) {
	pdf := makePDF(sampleLines)
	cases := []struct {
		name     string
		data     []byte
		contains []string
		absent   []string
		code     string
	}{
		{name: "notes.txt", data: []byte("\xef\xbb\xbfplain text here"), contains: []string{"plain text here"}, absent: []string{"\ufeff"}},
		{name: "readme.md", data: []byte("# Title\n\nSome *markdown*."), contains: []string{"# Title", "Some *markdown*."}},
		{name: "page.html", data: []byte(`<html><head><title>T1</title><style>.x{color:red}</style><script>var secret=1</script></head>
			<body><h1>Heading</h1><p>First <b>bold</b> para.</p><p>Second&amp;para</p></body></html>`),
			contains: []string{"T1", "Heading", "First bold para.", "Second&para"}, absent: []string{"color:red", "secret", "<p>"}},
		{name: "noext", data: []byte("<!DOCTYPE html><p>sniffed</p>"), contains: []string{"sniffed"}, absent: []string{"<p>"}},
		{name: "doc.pdf", data: pdf, contains: []string{"Volcanic soil in the Azores grows pineapples under glass.", "geothermal steam"}, absent: []string{"glass.The"}},
		{name: "renamed.bin", data: pdf, contains: []string{"pineapples"}},
		// NUL (raw, or \000 in a pdf string) would fail every chunk insert (22021).
		{name: "nul.html", data: []byte("<p>before\x00after\x01</p>"), contains: []string{"beforeafter"}},
		{name: "nul.pdf", data: makePDF([]string{"Hello\x00World"}), contains: []string{"HelloWorld"}},
		{name: "nul.md", data: []byte("text\x00"), code: CodeInvalidFile},
		{name: "broken.pdf", data: append([]byte("%PDF-1.4\n"), bytes.Repeat([]byte{0xff, 0x00, 0x13}, 100)...), code: CodeInvalidFile},
		{name: "cut.pdf", data: pdf[:len(pdf)/2], code: CodeInvalidFile},
		{name: "latin1.txt", data: []byte("caf\xe9"), code: CodeInvalidFile},
		{name: "image.png", data: []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), code: CodeUnsupportedFile},
		{name: "empty.txt", data: []byte("  \n\t "), code: CodeInvalidFile},
		{name: "empty.html", data: []byte("<html><script>x</script></html>"), code: CodeInvalidFile},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text, err := extract(c.name, c.data)
			if c.code != "" {
				var xe *extractError
				if !errors.As(err, &xe) || xe.Code != c.code {
					t.Fatalf("err = %v, want code %s (text %q)", err, c.code, text)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !textcheck.Valid(text) || textcheck.Clean(text) != text {
				t.Errorf("text %q has NUL, control characters or invalid UTF-8", text)
			}
			for _, s := range c.contains {
				if !strings.Contains(text, s) {
					t.Errorf("text %q lacks %q", text, s)
				}
			}
			for _, s := range c.absent {
				if strings.Contains(text, s) {
					t.Errorf("text %q has %q", text, s)
				}
			}
		})
	}
}
