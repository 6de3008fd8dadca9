package reqbody

import (
	"strings"
	"testing"
)

// Typical bodies: the proxy benchmark's short chat, a 4-turn chat of about 2 KB with a
// system prompt and non-ASCII text, a 32 KB retrieval-style prompt, and an embeddings batch.
var (
	shortChat  = []byte(`{"model":"m","messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":16}`)
	mediumChat = []byte(`{"model":"llama-3.1-8b-instruct","messages":[` +
		`{"role":"system","content":"` + strings.Repeat("You are a helpful assistant. Answer briefly. ", 12) + `"},` +
		`{"role":"user","content":"` + strings.Repeat("Qu'est-ce que la complexité d'un algorithme ? ", 8) + `"},` +
		`{"role":"assistant","content":"` + strings.Repeat("It measures how cost grows with input size.\\n", 8) + `"},` +
		`{"role":"user","content":"` + strings.Repeat(`And for \"quicksort\" \u2014 worst case? `, 8) + `"}],` +
		`"temperature":0.7,"top_p":0.95,"max_completion_tokens":512,"stream":true,"stream_options":{"include_usage":true},"n":1}`)
	longChat   = []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("Context passage with facts, numbers 12345 and names. ", 620) + `"}],"max_tokens":256}`)
	embedBatch = []byte(`{"model":"e5","input":[` + strings.Repeat(`"a sentence to embed, about forty bytes",`, 63) + `"last"]}`)
)

func TestParseAllocatesNothing(t *testing.T) {
	for _, b := range [][]byte{shortChat, mediumChat, longChat} {
		n := testing.AllocsPerRun(100, func() {
			if _, err := Parse(b, Chat, DefaultLimits()); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("Parse of %d bytes: %v allocations, want 0", len(b), n)
		}
	}
}

func benchParse(b *testing.B, body []byte, ep Endpoint) {
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	lim := DefaultLimits()
	for b.Loop() {
		if _, err := Parse(body, ep, lim); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseShortChat(b *testing.B)  { benchParse(b, shortChat, Chat) }
func BenchmarkParseMediumChat(b *testing.B) { benchParse(b, mediumChat, Chat) }
func BenchmarkParseLongChat(b *testing.B)   { benchParse(b, longChat, Chat) }
func BenchmarkParseEmbeddings(b *testing.B) { benchParse(b, embedBatch, Embeddings) }

func BenchmarkAppendIncludeUsage(b *testing.B) {
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":64,"stream":true}`)
	f, err := Parse(body, Chat, DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		dst = f.AppendIncludeUsage(dst[:0], body)
	}
}
