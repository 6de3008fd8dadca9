package service

import (
	"bytes"
	"strings"
	"testing"
)

// TestFineTuneDownloadsFromS3: the worker's dataset and adapter downloads stream from the
// S3 store after the handler returns; a read tied to the request's context stopped there,
// cutting the body short of its Content-Length.
func TestFineTuneDownloadsFromS3(t *testing.T) {
	tc := startControl(t, func(o *Options) {
		fineTuneOptions(o)
		filesStores(t)["s3"](&o.Files)
	})
	_, dev, trainID := fineTuneSetup(t, tc)
	j := tc.createJob(dev.Token, map[string]any{"model": "base-chat", "training_file": trainID})
	tc.waitStatus(dev.Token, j.ID, "queued")
	task := tc.claim("gpu-worker-1", 30)
	if task == nil {
		t.Fatal("claim: no task although a job is queued")
	}
	data := tc.internal("GET", task.TrainingFile.URL, task.LeaseToken, nil, 200)
	if want := strings.Repeat(chatLine+"\n", 4); string(data.Body) != want {
		t.Fatalf("dataset download: %d bytes %q, want %d", len(data.Body), data.Body, len(want))
	}
	adapter := bytes.Repeat([]byte("adapter-bytes "), 1000)
	tc.internal("PUT", task.AdapterUploadURL, task.LeaseToken, adapter, 200)
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/complete", task.LeaseToken, map[string]any{"trained_tokens": 10}, 204)
	got := tc.internal("GET", "/internal/v1/fine_tuning/jobs/"+j.ID+"/adapter", "", nil, 200)
	if !bytes.Equal(got.Body, adapter) {
		t.Fatalf("adapter download: %d bytes, want %d", len(got.Body), len(adapter))
	}
}
