package loadgen

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// The load generator shares one core with nothing but itself, and must stay
// cheaper than the server it measures. So it does not marshal a
// CheckRequest per call, nor unmarshal a whole CheckResponse: requests are
// encoded once (wireRequest) and responses are scanned for the one field
// that decides the outcome, CheckResponse.status.code (checkReply).

// wireRequest is an encoded CheckRequest, sent as is by rawCodec.
type wireRequest struct {
	data mem.BufferSlice
}

func newWireRequest(b []byte) wireRequest {
	return wireRequest{data: mem.BufferSlice{mem.SliceBuffer(b)}}
}

// checkReply receives what rawCodec decodes from a CheckResponse.
type checkReply struct {
	code int32  // CheckResponse.status.code; 0 (OK) when absent
	buf  []byte // scratch for responses split over several buffers
}

// rawCodec is the grpc codec of the load generator's calls.
type rawCodec struct{}

var _ encoding.CodecV2 = rawCodec{}

// Name is "proto": the server sees ordinary protobuf messages.
func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	w, ok := v.(*wireRequest)
	if !ok {
		return nil, fmt.Errorf("loadgen codec: cannot marshal %T", v)
	}
	// SliceBuffer's Ref and Free do nothing: the shared bytes are never
	// recycled, so every call may send the same slice.
	return w.data, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*checkReply)
	if !ok {
		return fmt.Errorf("loadgen codec: cannot unmarshal into %T", v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		r.buf = r.buf[:0]
		for _, d := range data {
			r.buf = append(r.buf, d.ReadOnlyData()...)
		}
		b = r.buf
	}
	code, err := statusCode(b)
	if err != nil {
		return err
	}
	r.code = code
	return nil
}

var errBadResponse = errors.New("malformed CheckResponse")

// statusCode returns CheckResponse.status.code from an encoded
// CheckResponse (field 1, a google.rpc.Status whose field 1 is the code).
// Repeated occurrences merge, so the last code wins, as in proto.Unmarshal.
func statusCode(b []byte) (int32, error) {
	var code int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, errBadResponse
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			st, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, errBadResponse
			}
			b = b[n:]
			for len(st) > 0 {
				num, typ, n := protowire.ConsumeTag(st)
				if n < 0 {
					return 0, errBadResponse
				}
				st = st[n:]
				if num == 1 && typ == protowire.VarintType {
					v, n := protowire.ConsumeVarint(st)
					if n < 0 {
						return 0, errBadResponse
					}
					code = int32(v)
					st = st[n:]
					continue
				}
				n = protowire.ConsumeFieldValue(num, typ, st)
				if n < 0 {
					return 0, errBadResponse
				}
				st = st[n:]
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, errBadResponse
		}
		b = b[n:]
	}
	return code, nil
}
