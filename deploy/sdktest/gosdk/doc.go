// Package gosdk runs the official OpenAI Go client (github.com/openai/openai-go/v3) against
// a running platform: control, a gateway and a worker with the simulator engine, started by
// the test. It has no code outside tests; it is its own package because the client is slow
// to compile and no other test should pay for it.
package gosdk
