package obs

import (
	"bytes"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestMetricsHandler(t *testing.T) {
	reg := NewRegistry("test")
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/metrics")
	MetricsHandler(reg)(&ctx)
	body := string(ctx.Response.Body())
	if ctx.Response.StatusCode() != 200 || !strings.Contains(body, `maas_build_info{component="test"`) {
		t.Fatalf("status %d body %.300s", ctx.Response.StatusCode(), body)
	}
}

func TestLoggerJSON(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(LogOptions{Component: "x", JSON: true, Out: &buf}).Info("hello", "request_id", "r1")
	if !strings.Contains(buf.String(), `"component":"x"`) || !strings.Contains(buf.String(), `"request_id":"r1"`) {
		t.Errorf("log line %s", buf.String())
	}
}
