package sim

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/openai"
)

// Embed returns the simulator's embedding of text: a hashing embedder. Each term (see
// eachWord) adds +1 or -1 at a position chosen by its hash, and ±0.5 at a second one; the
// vector is then L2-normalised. Texts sharing words therefore have a high cosine
// similarity, and the same text always gives the same vector. A text without terms is
// hashed as a whole.
func Embed(dst []float32, text string) []float32 {
	clear(dst)
	dim := uint64(len(dst))
	found := false
	eachWord(text, func(h uint64) {
		addTerm(dst, dim, h)
		found = true
	})
	if !found {
		addTerm(dst, dim, promptSeed(text))
	}
	normalize(dst)
	return dst
}

func embedTokens(dst []float32, tokens []int) []float32 {
	clear(dst)
	dim := uint64(len(dst))
	for _, t := range tokens {
		addTerm(dst, dim, (uint64(t)+0x9e3779b97f4a7c15)*0xbf58476d1ce4e5b9)
	}
	if len(tokens) == 0 {
		addTerm(dst, dim, 1)
	}
	normalize(dst)
	return dst
}

func addTerm(v []float32, dim, h uint64) {
	h ^= h >> 31
	h *= 0x94d049bb133111eb
	h ^= h >> 29
	if h&1 == 0 {
		v[(h>>1)%dim]++
	} else {
		v[(h>>1)%dim]--
	}
	if h&(1<<40) == 0 {
		v[(h>>41)%dim] += 0.5
	} else {
		v[(h>>41)%dim] -= 0.5
	}
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
