// Package peerclose notices that the peer of an idle TCP connection went away, without
// reading anything from it: fasthttp gives a handler no close notification, and both the
// gateway (a client leaving a request that waits for its backend) and the engine simulator
// (a client leaving a request being generated) need one.
package peerclose
