package apikey

import (
	"encoding/hex"
	"testing"
)

func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !Valid(k) {
			t.Fatalf("generated key %q is not valid", k)
		}
		if seen[k] {
			t.Fatal("duplicate key")
		}
		seen[k] = true
	}
}

func TestValid(t *testing.T) {
	k, _ := Generate()
	for _, bad := range []string{"", "sk-", k[:len(k)-1], k + "a", "pk-" + k[3:], k[:10] + "!" + k[11:]} {
		if Valid(bad) {
			t.Errorf("Valid(%q) = true", bad)
		}
	}
}

func TestSumIsSHA256(t *testing.T) {
	h := Sum([]byte("abc"))
	if got := hex.EncodeToString(h[:]); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("sum %s", got)
	}
	if Visible("sk-abcdefghijkl") != "sk-abcdefgh" {
		t.Error("visible prefix")
	}
}
