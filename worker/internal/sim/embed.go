package sim

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/openai"
)

// Embed returns the simulator's embedding of text in dst (its length is the dimension): a
// feature-hashing bag of words and character trigrams, the "hashing trick" with
// fastText-style subwords. It is no language model: it knows no synonyms ("fast" and
// "quickly" are unrelated to it), only shared words and shared pieces of words, so a text
// sharing one exact word with a query can still outrank a paraphrase that only shares
// pieces of words.
//
//   - Words: maximal runs of Unicode letters and digits, lower-cased (punctuation and
//     spaces separate them). English function words (the, of, how, is, … see stopWords)
//     and leftover one-letter ASCII words ("s" of "Sunday's") are skipped, unless the text
//     has no other word; a text with no word at all is hashed as a whole.
//   - Features of a word of n characters: its n character trigrams framed by boundary
//     marks (^word$ gives ^wo, wor, ord, rd$; a one-letter word gives one) and the whole
//     word as one more feature (as fastText counts it), each weighing 1/√(n+1), so every
//     word weighs the same whatever its length. Trigrams make forms of one word similar:
//     "reset" and "resetting" share ^re, res, ese, set; "tickets" and "ticket" all but one.
//     Texts in scripts without spaces (Chinese, Japanese) are one long word each and are
//     compared by their trigrams.
//   - Signed hashing: each feature's 64-bit hash picks one coordinate (hash mod dimension)
//     and a sign (+ or −, one bit of the hash), so collisions cancel on average instead of
//     adding up. Word and trigram hashes are seeded apart.
//   - The sum is L2-normalised: the dot product of two embeddings is their cosine.
//
// The same text and dimension (MAAS_SIM_EMBEDDING_DIM, or the request's dimensions) always
// give the same vector. Embed does not allocate (about 2 µs for a 100-byte text).
func Embed(dst []float32, text string) []float32 {
	clear(dst)
	if len(dst) == 0 {
		return dst
	}
	dim := uint64(len(dst))
	if !addWords(dst, dim, text, false) && !addWords(dst, dim, text, true) {
		addFeature(dst, dim, promptSeed(text), 1)
	}
	normalize(dst)
	return dst
}

// Seeds of the two feature kinds (FNV-1a's offset basis and a second constant).
const (
	wordSeed    = 14695981039346656037
	trigramSeed = 0x9e3779b97f4a7c15
	fnvPrime    = 1099511628211
	noRune      = -1 // the boundary marks ^ and $ of a word's trigrams
)

// addWords adds the features of every word of text (stop words too when withStop is
// set) and reports whether it added any.
func addWords(v []float32, dim uint64, text string, withStop bool) bool {
	added := false
	for i := 0; i < len(text); {
		r, size := decodeLower(text, i)
		if !isWordRune(r) {
			i += size
			continue
		}
		start, n := i, 0
		for i < len(text) {
			r, size = decodeLower(text, i)
			if !isWordRune(r) {
				break
			}
			i += size
			n++
		}
		word := text[start:i]
		if !withStop && (n == 1 && word[0] < utf8.RuneSelf || isStopWord(word)) {
			continue
		}
		addWord(v, dim, word, n)
		added = true
	}
	return added
}

// addWord adds the word's n framed trigrams and the word itself (n is its rune count).
func addWord(v []float32, dim uint64, word string, n int) {
	h := uint64(wordSeed)
	w := float32(1 / math.Sqrt(float64(n+1)))
	a, b := rune(noRune), rune(noRune) // the two runes before the current one; a is unset at first
	first := true
	for j := 0; j < len(word); {
		r, size := decodeLower(word, j)
		j += size
		h = (h ^ uint64(r)) * fnvPrime
		if !first {
			addFeature(v, dim, trigram(a, b, r), w)
		}
		first = false
		a, b = b, r
	}
	addFeature(v, dim, trigram(a, b, noRune), w)
	addFeature(v, dim, h, w)
}

// trigram hashes three runes (noRune for a boundary mark).
func trigram(a, b, c rune) uint64 {
	h := uint64(trigramSeed)
	h = (h ^ uint64(uint32(a))) * fnvPrime
	h = (h ^ uint64(uint32(b))) * fnvPrime
	return (h ^ uint64(uint32(c))) * fnvPrime
}

// addFeature adds ±w at the coordinate picked by h (mixed first: FNV's low bits are weak).
func addFeature(v []float32, dim, h uint64, w float32) {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	if h&1 == 0 {
		v[(h>>1)%dim] += w
	} else {
		v[(h>>1)%dim] -= w
	}
}

// decodeLower decodes the rune at s[i:], lower-cased.
func decodeLower(s string, i int) (rune, int) {
	if c := s[i]; c < utf8.RuneSelf {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		return rune(c), 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	return unicode.ToLower(r), size
}

func isWordRune(r rune) bool {
	if r < utf8.RuneSelf {
		return r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
	}
	return unicode.IsLetter(r) || unicode.IsDigit(r)
}

// stopWords are the English function words Embed skips: they say nothing about a text's
// subject, and two unrelated questions share many of them ("how do I …").
var stopWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range []string{
		"a", "about", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at",
		"be", "been", "before", "being", "both", "but", "by", "can", "could", "did", "do",
		"does", "doing", "during", "each", "for", "from", "had", "has", "have", "having", "he",
		"her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its",
		"just", "me", "more", "most", "my", "no", "nor", "not", "of", "off", "on", "once",
		"only", "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should",
		"so", "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there",
		"these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
		"very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
		"why", "will", "with", "would", "you", "your", "yours",
	} {
		m[w] = true
	}
	return m
}()

// isStopWord reports whether word, lower-cased, is a stop word (without allocating).
func isStopWord(word string) bool {
	const longest = 7 // "through"
	if len(word) > longest {
		return false
	}
	var buf [longest]byte
	for i := 0; i < len(word); i++ {
		c := word[i]
		if c >= utf8.RuneSelf {
			return false
		}
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return stopWords[string(buf[:len(word)])]
}

// embedTokens embeds a prompt given as token ids: a signed-hashing bag of its ids.
func embedTokens(dst []float32, tokens []int) []float32 {
	clear(dst)
	dim := uint64(len(dst))
	for _, t := range tokens {
		addFeature(dst, dim, (uint64(t)+trigramSeed)*fnvPrime, 1)
	}
	if len(tokens) == 0 {
		addFeature(dst, dim, 1, 1)
	}
	normalize(dst)
	return dst
}

func normalize(v []float32) {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	if sum == 0 {
		v[0] = 1
		return
	}
	inv := 1 / math.Sqrt(sum)
	for i := range v {
		v[i] = float32(float64(v[i]) * inv)
	}
}

func (s *Sim) embeddings(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	var req openai.EmbeddingRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		apierr.WriteFast(ctx, badJSON(err))
		return
	}
	m, err := s.lookup(req.Model, true)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	n := req.Input.Len()
	if n == 0 {
		apierr.WriteFast(ctx, apierr.Param("input", "input must not be empty"))
		return
	}
	b64 := false
	switch req.EncodingFormat {
	case "", openai.EncodingFloat:
	case openai.EncodingBase64:
		b64 = true
	default:
		apierr.WriteFast(ctx, apierr.Param("encoding_format", "encoding_format must be float or base64"))
		return
	}
	dim := s.o.EmbeddingDim
	if req.Dimensions != nil {
		if *req.Dimensions < 1 || *req.Dimensions > 65536 {
			apierr.WriteFast(ctx, apierr.Param("dimensions", "dimensions must be between 1 and 65536"))
			return
		}
		dim = *req.Dimensions
	}
	prompt := 0
	for i := 0; i < n; i++ {
		if req.Input.Tokens != nil {
			prompt += len(req.Input.Tokens[i])
			continue
		}
		if req.Input.Strings[i] == "" {
			apierr.WriteFast(ctx, apierr.Param("input", "input[%d] must not be an empty string", i))
			return
		}
		prompt += Tokens(req.Input.Strings[i])
	}
	if prompt > s.o.MaxModelLen*n {
		apierr.WriteFast(ctx, apierr.Param("input", "input is longer than the model's maximum context length (%d tokens)", s.o.MaxModelLen))
		return
	}

	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	f, answered := s.injectLeading(ctx, &timer)
	if answered {
		return
	}
	if !s.admitOrRefuse(ctx, int64(prompt)) {
		return
	}
	queued := time.Since(start)
	ok := s.sleep(&timer, s.o.TTFT)
	s.release(int64(prompt))
	if !ok {
		apierr.WriteFast(ctx, apierr.New(apierr.Unavailable, "simulator is stopping"))
		return
	}

	bp := bufPool.Get().(*[]byte)
	b := append((*bp)[:0], `{"object":"list","data":[`...)
	vec := make([]float32, dim)
	var raw []byte
	for i := 0; i < n; i++ {
		if req.Input.Tokens != nil {
			embedTokens(vec, req.Input.Tokens[i])
		} else {
			Embed(vec, req.Input.Strings[i])
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"embedding":`...)
		if b64 {
			raw = openai.AppendFloat32LE(raw[:0], vec)
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, raw)
			b = append(b, '"')
		} else {
			b = append(b, '[')
			for j, x := range vec {
				if j > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendFloat(b, float64(x), 'g', -1, 32)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	b = append(b, m.quoted...)
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt), 10)
	b = append(b, `}}`...)

	mm := m.mm
	mm.promptTokens.Add(float64(prompt))
	mm.stop.Inc()
	mm.ttft.Observe((queued + s.o.TTFT).Seconds())
	mm.e2e.Observe(time.Since(start).Seconds())
	ctx.Response.Header.SetContentType("application/json")
	switch {
	case f.Drop:
		writeDropped(s, ctx, b, f.DropAfter)
	case f.Malformed:
		ctx.SetBody(b[:len(b)/2])
	default:
		ctx.SetBody(b)
	}
	*bp = b
	bufPool.Put(bp)
}
