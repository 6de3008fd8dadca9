package apidocs

import (
	"bytes"
	"embed"
	"path"
	"strings"
	"sync"

	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
)

//go:embed openapi.json
var document []byte

//go:embed assets/*.js assets/*.css assets/*.png
var assets embed.FS

// Document returns the OpenAPI document (JSON). The caller must not modify it.
func Document() []byte { return document }

// Paths served by Register.
const (
	OpenAPIPath = "/openapi.json"
	DocsPath    = "/docs"
	RedocPath   = "/redoc"
	AssetsPath  = "/docs/assets/{file}"
)

// The pages use relative URLs so that they also work behind a reverse proxy that mounts
// the gateway under a path prefix.
const swaggerPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MaaS API – Swagger UI</title>
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
</script>
</body>
</html>
`

const redocPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MaaS API – ReDoc</title>
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="docs/assets/redoc.standalone.js"></script>
</body>
</html>
`

// Register adds GET /openapi.json, /docs, /redoc and /docs/assets/{file} to r. The
// handlers need no authentication and are safe for concurrent use.
func Register(r *router.Router) {
	r.GET(OpenAPIPath, serveBytes("application/json", document))
	r.GET(DocsPath, serveBytes("text/html; charset=utf-8", []byte(swaggerPage)))
	r.GET(RedocPath, serveBytes("text/html; charset=utf-8", []byte(redocPage)))
	r.GET(AssetsPath, serveAsset)
}

func serveBytes(contentType string, body []byte) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType(contentType)
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.SetBody(body)
	}
}

// asset is one embedded file with its gzip form, computed on first use.
type asset struct {
	once        sync.Once
	contentType string
	plain, gz   []byte
}

// contentTypes are fixed here rather than read from the system's MIME database, which
// differs between machines (.js is application/javascript on some).
var contentTypes = map[string]string{
	".js":  "text/javascript; charset=utf-8",
	".css": "text/css; charset=utf-8",
	".png": "image/png",
}

var (
	assetsMu    sync.Mutex
	assetsCache = map[string]*asset{}
)

func lookupAsset(name string) *asset {
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return nil
	}
	assetsMu.Lock()
	a, ok := assetsCache[name]
	if !ok {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			assetsMu.Unlock()
			return nil
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			assetsMu.Unlock()
			return nil
		}
		a = &asset{contentType: ct, plain: b}
		assetsCache[name] = a
	}
	assetsMu.Unlock()
	a.once.Do(func() {
		if !strings.HasPrefix(a.contentType, "image/") {
			a.gz = fasthttp.AppendGzipBytesLevel(nil, a.plain, fasthttp.CompressBestCompression)
		}
	})
	return a
}

func serveAsset(ctx *fasthttp.RequestCtx) {
	name, _ := ctx.UserValue("file").(string)
	a := lookupAsset(name)
	if a == nil {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("not found\n")
		return
	}
	ctx.SetContentType(a.contentType)
	// The files change only with a new binary; a day of caching is safe.
	ctx.Response.Header.Set("Cache-Control", "public, max-age=86400")
	ctx.Response.Header.Set("Vary", "Accept-Encoding")
	if a.gz != nil && bytes.Contains(ctx.Request.Header.Peek("Accept-Encoding"), []byte("gzip")) {
		ctx.Response.Header.Set("Content-Encoding", "gzip")
		ctx.SetBody(a.gz)
		return
	}
	ctx.SetBody(a.plain)
}
