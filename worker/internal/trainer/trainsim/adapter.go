package trainsim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
)

// The simulated adapter's model: two layers of width 64, LoRA on q_proj and v_proj.
const (
	simLayers = 2
	simHidden = 64
)

// TargetModules are the modules the simulated adapter claims to adapt.
var TargetModules = []string{"q_proj", "v_proj"}

// AdapterConfig is adapter_config.json in PEFT's layout (the fields PEFT and vLLM read).
type AdapterConfig struct {
	BaseModelNameOrPath string   `json:"base_model_name_or_path"`
	PEFTType            string   `json:"peft_type"`
	TaskType            string   `json:"task_type"`
	R                   int      `json:"r"`
	LoRAAlpha           int      `json:"lora_alpha"`
	LoRADropout         float64  `json:"lora_dropout"`
	TargetModules       []string `json:"target_modules"`
	Bias                string   `json:"bias"`
	FanInFanOut         bool     `json:"fan_in_fan_out"`
	InferenceMode       bool     `json:"inference_mode"`
	ModulesToSave       []string `json:"modules_to_save"`
}

const adapterReadme = `# Simulated LoRA adapter

Written by the MaaS platform's SIMULATED trainer (worker train-sim). No model was trained:
the tensors have PEFT's names but random values and shapes that fit no real model. It
exists so that the fine-tuning pipeline can be tested end to end without a GPU.
`

// WriteAdapter writes the simulated adapter into o.OutputDir (created when missing).
func WriteAdapter(o Options) error {
	if err := os.MkdirAll(o.OutputDir, 0o755); err != nil {
		return err
	}
	cfg := AdapterConfig{BaseModelNameOrPath: o.BaseModel, PEFTType: "LORA", TaskType: "CAUSAL_LM",
		R: o.LoRARank, LoRAAlpha: o.LoRAAlpha, LoRADropout: 0.05, TargetModules: TargetModules, Bias: "none", InferenceMode: true}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.OutputDir, "adapter_config.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(uint64(o.Seed), 0xada))
	var tensors []Tensor
	for layer := range simLayers {
		for _, m := range TargetModules {
			prefix := fmt.Sprintf("base_model.model.model.layers.%d.self_attn.%s.", layer, m)
			tensors = append(tensors,
				randomTensor(rng, prefix+"lora_A.weight", o.LoRARank, simHidden),
				randomTensor(rng, prefix+"lora_B.weight", simHidden, o.LoRARank))
		}
	}
	st, err := EncodeSafetensors(tensors, map[string]string{"format": "pt", "maas_simulated": "true"})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.OutputDir, "adapter_model.safetensors"), st, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(o.OutputDir, "README.md"), []byte(adapterReadme), 0o644)
}

// Tensor is a float32 tensor for EncodeSafetensors.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

func randomTensor(rng *rand.Rand, name string, rows, cols int) Tensor {
	t := Tensor{Name: name, Shape: []int{rows, cols}, Data: make([]float32, rows*cols)}
	for i := range t.Data {
		t.Data[i] = float32(rng.NormFloat64() * 0.01)
	}
	return t
}

type tensorInfo struct {
	DType       string `json:"dtype"`
	Shape       []int  `json:"shape"`
	DataOffsets [2]int `json:"data_offsets"`
}

// EncodeSafetensors returns a safetensors file: an 8-byte little-endian header length, a
// JSON header (tensor name → dtype, shape, [begin, end) byte offsets, plus __metadata__)
// padded with spaces to a multiple of 8, then the tensors' little-endian bytes back to back,
// in name order, covering the data section without holes.
func EncodeSafetensors(tensors []Tensor, metadata map[string]string) ([]byte, error) {
	sorted := append([]Tensor(nil), tensors...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var data bytes.Buffer
	for _, t := range sorted {
		n := 1
		for _, d := range t.Shape {
			n *= d
		}
		if n != len(t.Data) {
			return nil, fmt.Errorf("tensor %s: shape %v holds %d values, not %d", t.Name, t.Shape, n, len(t.Data))
		}
		if _, dup := header[t.Name]; dup {
			return nil, fmt.Errorf("tensor %s given twice", t.Name)
		}
		begin := data.Len()
		for _, v := range t.Data {
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			data.Write(b[:])
		}
		header[t.Name] = tensorInfo{DType: "F32", Shape: t.Shape, DataOffsets: [2]int{begin, data.Len()}}
	}
	h, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := make([]byte, 8, 8+len(h)+data.Len())
	binary.LittleEndian.PutUint64(out, uint64(len(h)))
	out = append(out, h...)
	return append(out, data.Bytes()...), nil
}
