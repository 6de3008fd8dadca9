package sim

import (
	"math"
	"testing"
)

// paraphrases are (query, paraphrase, unrelated) triples: the paraphrase says what the
// query says in other word forms (plurals, tenses, derived words) and shares few or no
// exact words with it; the unrelated text shares its function words ("how do I", "the",
// "on") and nothing else. A bag of exact words ranks most unrelated texts first.
var paraphrases = []struct{ query, paraphrase, unrelated string }{
	{"How do I reset my password?", "Steps for resetting a forgotten password", "How do I cook rice in a pot?"},
	{"the cat sat on the mat", "cats sitting on mats", "the stock market fell on the Monday"},
	{"Where can I buy cheap train tickets?", "purchasing a ticket for the trains cheaply", "Where can I see the northern lights?"},
	{"The weather is getting colder this week", "cold weather expected during the coming weeks", "This is the week the project is due"},
	{"invoice payment overdue", "the invoices were paid after their due date", "the sun is bright over the hills"},
	{"installing the database server", "how to install a server for databases", "the children are playing in the garden"},
	{"my laptop battery drains quickly", "batteries of laptops draining fast", "my grandmother bakes bread every morning"},
	{"Is the museum open on Sundays?", "museum opening hours on a Sunday", "Is the river deep on this side?"},
	{"refund for a damaged parcel", "refunds when parcels arrive damaged", "a walk for the whole family"},
	{"translate this sentence into French", "French translation of sentences", "put this plant into the sun"},
}

func TestEmbedRanksParaphraseAboveUnrelated(t *testing.T) {
	// 384 is the default dimension; far fewer coordinates than a text has features (64)
	// make collisions as loud as the signal.
	for _, dim := range []int{384, 256, 1024} {
		for _, p := range paraphrases {
			q := Embed(make([]float32, dim), p.query)
			near := cosine(q, Embed(make([]float32, dim), p.paraphrase))
			far := cosine(q, Embed(make([]float32, dim), p.unrelated))
			t.Logf("dim %d, %q: paraphrase %.3f, unrelated %.3f", dim, p.query, near, far)
			if near <= far {
				t.Errorf("dim %d, %q: paraphrase %.3f <= unrelated %.3f", dim, p.query, near, far)
			}
		}
	}
}

// TestEmbedRetrieval searches the paraphrases with each query, as a vector store would: the
// query's own paraphrase must be the nearest of all paraphrases and unrelated texts.
func TestEmbedRetrieval(t *testing.T) {
	var docs [][]float32
	for _, p := range paraphrases {
		docs = append(docs, Embed(make([]float32, 384), p.paraphrase), Embed(make([]float32, 384), p.unrelated))
	}
	for i, p := range paraphrases {
		q := Embed(make([]float32, 384), p.query)
		best, bestScore := -1, math.Inf(-1)
		for j, d := range docs {
			if s := cosine(q, d); s > bestScore {
				best, bestScore = j, s
			}
		}
		if best != 2*i {
			t.Errorf("%q: nearest is document %d, want its paraphrase %d", p.query, best, 2*i)
		}
	}
}

func TestEmbedProperties(t *testing.T) {
	a := Embed(make([]float32, 384), "Fine-tuning a LoRA adapter")
	b := Embed(make([]float32, 384), "fine TUNING a lora ADAPTER!")
	if c := cosine(a, b); c < 0.9999 {
		t.Errorf("case and punctuation change the vector: cosine %.5f", c)
	}
	var n float64
	for _, x := range a {
		n += float64(x) * float64(x)
	}
	if math.Abs(n-1) > 1e-5 {
		t.Errorf("norm² %v, want 1", n)
	}
	if c := cosine(a, Embed(make([]float32, 384), "Fine-tuning a LoRA adapter")); c != 1 {
		t.Errorf("not deterministic: %v", c)
	}
	// Texts without letters or digits, or only function words, still give unit vectors,
	// different from one another.
	x, y := Embed(make([]float32, 384), "!!!"), Embed(make([]float32, 384), "???")
	if cosine(x, y) > 0.99 {
		t.Error("texts without words all map to one vector")
	}
	if v := Embed(make([]float32, 8), "the of and"); math.IsNaN(float64(v[0])) {
		t.Error("stop words only: NaN")
	}
	// Non-Latin scripts: shared characters bring texts closer.
	zh := Embed(make([]float32, 384), "今天天气很好")
	if cosine(zh, Embed(make([]float32, 384), "天气很好")) <= cosine(zh, Embed(make([]float32, 384), "我喜欢猫")) {
		t.Error("Chinese: shared characters do not bring texts closer")
	}
}

func TestEmbedAllocs(t *testing.T) {
	v := make([]float32, 384)
	text := "Where can I buy cheap train tickets for Sunday's journey to Zürich?"
	if n := testing.AllocsPerRun(100, func() { Embed(v, text) }); n != 0 {
		t.Errorf("Embed allocates %v times per call", n)
	}
}

func BenchmarkEmbed(b *testing.B) {
	v := make([]float32, 384)
	text := "Where can I buy cheap train tickets for Sunday's journey to Zürich? The weather is getting colder this week."
	b.ReportAllocs()
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		Embed(v, text)
	}
}
