package goloop

import (
	"context"
	"encoding/json"
	"testing"
)

// The features method answers with JSON that says what "auto" chooses;
// where io_uring is usable, the probes it rests on must all have run and
// found what newUring requires (multishot recv needs a 6.0 kernel, which
// newUring's SEND_ZC check stands for).
func TestFeatures(t *testing.T) {
	out, err := methods["goloop.features"](context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var f Features
	if err := json.Unmarshal(out, &f); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", out)
	if f.GoVersion == "" || f.Kernel == "" {
		t.Fatalf("missing versions: %s", out)
	}
	u := f.IOUring
	if !u.Usable {
		if u.Error == "" {
			t.Fatalf("io_uring unusable without a reason: %s", out)
		}
		return
	}
	if u.ProbeError != "" {
		t.Fatalf("probe failed where io_uring is usable: %s", out)
	}
	for _, p := range []*bool{u.ProvidedBuffers, u.MultishotAccept, u.MultishotRecv, u.SendZC} {
		if p == nil || !*p {
			t.Fatalf("io_uring usable but a feature it needs is missing: %s", out)
		}
	}
}
