package classifier_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/config"
)

// frameParser reads the first frame of a protocol whose frames are a 2-byte
// big-endian length and that many bytes: here, the station ID.
type frameParser struct{ maxID int }

func (p frameParser) Parse(data []byte) (string, error) {
	if len(data) < 2 {
		return "", classifier.ErrNeedMore
	}
	n := int(binary.BigEndian.Uint16(data))
	if n == 0 || n > p.maxID {
		return "", errors.New("bad frame length") // never a frame: malformed
	}
	if len(data) < 2+n {
		return "", classifier.ErrNeedMore
	}
	return string(data[2 : 2+n]), nil
}

// A custom handoff binary registers its parser before the config is loaded;
// `classify: frame` then names it in the config.
func init() {
	classifier.Register("frame", func(p config.Payload) (classifier.Parser, error) {
		return frameParser{maxID: min(p.MaxBytes-2, 64)}, nil
	})
}

func ExampleRegister() {
	svc := &config.Service{
		Name:     "telemetry",
		Classify: "frame",
		Payload:  config.DefaultPayload("frame"), // as config.Parse gives it
		Routes:   []config.Route{{Match: config.Match{Key: "station-7"}, Pool: "vip"}},
		Pools: []config.Pool{
			{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
				{Name: "be1", Address: netip.MustParseAddrPort("198.19.1.11:7000"), Weight: 1},
				{Name: "be2", Address: netip.MustParseAddrPort("198.19.1.12:7000"), Weight: 1},
			}},
			{Name: "vip", Balance: config.BalanceHotStandby, Backends: []config.Backend{
				{Name: "primary", Address: netip.MustParseAddrPort("198.19.1.13:7000"), Weight: 1},
			}},
		},
	}
	r, err := classifier.New(svc)
	if err != nil {
		panic(err)
	}

	client, conn := net.Pipe()
	go func() {
		client.Write([]byte{0, 9})          // the length, in one segment
		client.Write([]byte("station-7..")) // the ID and the start of the next frame
	}()
	key, peeked, err := r.Classify(context.Background(), conn)
	if err != nil {
		panic(err)
	}
	d, err := r.Decide(netip.MustParseAddr("198.18.0.5"), key, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(d.Pool, d.Backend, d.Address, d.Label)
	fmt.Printf("replay %q\n", peeked)
	// Output:
	// vip primary 198.19.1.13:7000 frame=station-7
	// replay "\x00\tstation-7.."
}
