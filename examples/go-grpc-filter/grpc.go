package main

// The proxy-wasm ABI's gRPC calls, which the Go SDK does not wrap: the host functions
// (proxy_grpc_call, proxy_grpc_stream, proxy_grpc_send, proxy_get_status) imported here, the
// callbacks (proxy_on_grpc_*) exported here, beside the SDK's own imports and exports. Buffers
// the host returns are allocated through the SDK's proxy_on_memory_allocate (Go slices).

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
)

//go:wasmimport env proxy_grpc_call
func proxyGrpcCall(service *byte, serviceSize int32, serviceName *byte, serviceNameSize int32,
	method *byte, methodSize int32, metadata *byte, metadataSize int32,
	message *byte, messageSize int32, timeoutMs int32, token *uint32) uint32

//go:wasmimport env proxy_grpc_stream
func proxyGrpcStream(service *byte, serviceSize int32, serviceName *byte, serviceNameSize int32,
	method *byte, methodSize int32, metadata *byte, metadataSize int32, token *uint32) uint32

//go:wasmimport env proxy_grpc_send
func proxyGrpcSend(token uint32, message *byte, messageSize int32, endStream uint32) uint32

//go:wasmimport env proxy_get_status
func proxyGetStatus(code *uint32, message unsafe.Pointer, messageSize *int32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bufferType uint32, start int32, maxSize int32, data unsafe.Pointer, size *int32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mapType uint32, data unsafe.Pointer, size *int32) uint32

// The ABI's numbers this file uses.
const (
	bufferGrpcReceive          = 5 // proxy_get_buffer_bytes: the message a gRPC callback delivers
	mapInitialMetadata         = 4 // proxy_get_header_map_pairs: a stream's initial metadata
	mapTrailingMetadata        = 5 // and its trailing metadata
	statusOK                   = 0
	grpcStatusOK        uint32 = 0
)

// statusNames are the proxy-wasm statuses by number, as the Rust SDK prints them.
var statusNames = []string{"Ok", "NotFound", "BadArgument", "SerializationFailure",
	"ParseFailure", "BadExpression", "InvalidMemoryAccess", "Empty", "CasMismatch",
	"ResultMismatch", "InternalFailure", "BrokenConnection", "Unimplemented"}

// hostStatus is a proxy-wasm status other than Ok, returned by a host function.
type hostStatus uint32

func (s hostStatus) Error() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status %d", uint32(s))
}

func check(st uint32) error {
	if st == statusOK {
		return nil
	}
	return hostStatus(st)
}

// ptr is the address of b's first byte, nil for an empty b.
func ptr(b []byte) *byte {
	if len(b) == 0 {
		return nil
	}
	return &b[0]
}

// serializeMap writes pairs in the ABI's header map form: the count, each name's and value's
// length (little-endian u32), then each name and value followed by a NUL.
func serializeMap(pairs [][2]string) []byte {
	n := 4 + 8*len(pairs)
	for _, kv := range pairs {
		n += len(kv[0]) + len(kv[1]) + 2
	}
	b := make([]byte, 4+8*len(pairs), n)
	binary.LittleEndian.PutUint32(b, uint32(len(pairs)))
	for i, kv := range pairs {
		binary.LittleEndian.PutUint32(b[4+8*i:], uint32(len(kv[0])))
		binary.LittleEndian.PutUint32(b[8+8*i:], uint32(len(kv[1])))
	}
	for _, kv := range pairs {
		b = append(b, kv[0]...)
		b = append(b, 0)
		b = append(b, kv[1]...)
		b = append(b, 0)
	}
	return b
}

// deserializeMap reads the ABI's header map form; a malformed map reads as what was whole.
func deserializeMap(b []byte) [][2]string {
	if len(b) < 4 {
		return nil
	}
	count := int(binary.LittleEndian.Uint32(b))
	if count > (len(b)-4)/8 {
		return nil
	}
	pairs := make([][2]string, 0, count)
	at := 4 + 8*count
	for i := 0; i < count; i++ {
		kl := int(binary.LittleEndian.Uint32(b[4+8*i:]))
		vl := int(binary.LittleEndian.Uint32(b[8+8*i:]))
		if at+kl+vl+2 > len(b) {
			break
		}
		k := string(b[at : at+kl])
		at += kl + 1
		v := string(b[at : at+vl])
		at += vl + 1
		pairs = append(pairs, [2]string{k, v})
	}
	return pairs
}

// grpcCall makes a unary call of service/method on cluster and returns its token.
func grpcCall(cluster, service, method string, metadata [][2]string, message []byte,
	timeoutMs uint32) (uint32, error) {
	c, s, m, md := []byte(cluster), []byte(service), []byte(method), serializeMap(metadata)
	var token uint32
	st := proxyGrpcCall(ptr(c), int32(len(c)), ptr(s), int32(len(s)), ptr(m), int32(len(m)),
		ptr(md), int32(len(md)), ptr(message), int32(len(message)), int32(timeoutMs), &token)
	return token, check(st)
}

// grpcStream opens a stream of service/method on cluster and returns its token.
func grpcStream(cluster, service, method string, metadata [][2]string) (uint32, error) {
	c, s, m, md := []byte(cluster), []byte(service), []byte(method), serializeMap(metadata)
	var token uint32
	st := proxyGrpcStream(ptr(c), int32(len(c)), ptr(s), int32(len(s)), ptr(m), int32(len(m)),
		ptr(md), int32(len(md)), &token)
	return token, check(st)
}

// grpcSend sends message on stream token; endStream closes the module's side.
func grpcSend(token uint32, message []byte, endStream bool) error {
	end := uint32(0)
	if endStream {
		end = 1
	}
	return check(proxyGrpcSend(token, ptr(message), int32(len(message)), end))
}

// grpcStatus is the status code and message of the gRPC call that just closed.
func grpcStatus() (uint32, string) {
	var code uint32
	var data *byte
	var size int32
	if proxyGetStatus(&code, unsafe.Pointer(&data), &size) != statusOK || data == nil {
		return code, ""
	}
	return code, string(unsafe.Slice(data, size))
}

// grpcMessage is the message (size bytes) a gRPC callback delivers.
func grpcMessage(size uint32) []byte {
	if size == 0 {
		return nil
	}
	var data *byte
	var got int32
	if proxyGetBufferBytes(bufferGrpcReceive, 0, int32(size), unsafe.Pointer(&data), &got) != statusOK || data == nil {
		return nil
	}
	return unsafe.Slice(data, got)
}

// grpcMetadata is the stream's initial (mapInitialMetadata) or trailing metadata.
func grpcMetadata(mapType uint32) [][2]string {
	var data *byte
	var size int32
	if proxyGetHeaderMapPairs(mapType, unsafe.Pointer(&data), &size) != statusOK || data == nil {
		return nil
	}
	return deserializeMap(unsafe.Slice(data, size))
}

// grpcHandler is what a request does with its call's callbacks.
type grpcHandler interface {
	contextID() uint32
	onUnaryAnswer(status uint32, message []byte)
	onStreamInitialMetadata(entries int)
	onStreamMessage(message []byte)
	onStreamTrailingMetadata(entries int)
	onStreamClose(status uint32)
}

// calls maps each open call's token to the request that made it: the host names the call by
// its token, so the callbacks find their request whatever context id they are given.
var calls = map[uint32]grpcHandler{}

// unaryCalls holds the tokens of unary calls (a close without a message is their answer).
var unaryCalls = map[uint32]bool{}

// acting returns the handler of token and makes its request the effective context (the one
// the host acts on when the handler resumes or answers it).
func acting(token uint32) grpcHandler {
	h, ok := calls[token]
	if !ok {
		return nil
	}
	if err := proxywasm.SetEffectiveContext(h.contextID()); err != nil {
		proxywasm.LogWarnf("go-grpc-filter: cannot act on context %d: %v", h.contextID(), err)
		return nil
	}
	return h
}

//go:wasmexport proxy_on_grpc_receive_initial_metadata
func proxyOnGrpcReceiveInitialMetadata(_ uint32, token uint32, entries uint32) {
	if h := acting(token); h != nil {
		h.onStreamInitialMetadata(int(entries))
	}
}

//go:wasmexport proxy_on_grpc_receive
func proxyOnGrpcReceive(_ uint32, token uint32, size uint32) {
	h := acting(token)
	if h == nil {
		return
	}
	message := grpcMessage(size)
	if unaryCalls[token] {
		// A unary call answered OK: this message is its answer, and no close follows.
		delete(calls, token)
		delete(unaryCalls, token)
		h.onUnaryAnswer(grpcStatusOK, message)
		return
	}
	h.onStreamMessage(message)
}

//go:wasmexport proxy_on_grpc_receive_trailing_metadata
func proxyOnGrpcReceiveTrailingMetadata(_ uint32, token uint32, entries uint32) {
	if h := acting(token); h != nil {
		h.onStreamTrailingMetadata(int(entries))
	}
}

//go:wasmexport proxy_on_grpc_close
func proxyOnGrpcClose(_ uint32, token uint32, status uint32) {
	h := acting(token)
	if h == nil {
		return
	}
	unary := unaryCalls[token]
	delete(calls, token)
	delete(unaryCalls, token)
	if unary {
		h.onUnaryAnswer(status, nil)
		return
	}
	h.onStreamClose(status)
}
