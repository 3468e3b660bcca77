package proxy_test

import (
	"fmt"
	"net"
	"testing"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/proxy"
)

func TestHeader(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.ParseIP("198.18.0.5"), Port: 4000}
	mapped := &net.TCPAddr{IP: net.ParseIP("::ffff:198.18.1.1"), Port: 80}
	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 80}
	tests := []struct {
		version     config.ProxyProtocol
		client, loc net.Addr
		want        string // v1 text, "" for no header
		wantErr     bool
	}{
		{"off", v4, mapped, "", false},
		{"", v4, mapped, "", false},
		{"v1", v4, mapped, "PROXY TCP4 198.18.0.5 198.18.1.1 4000 80\r\n", false},
		{"v1", v4, v6, "PROXY TCP6 ::ffff:198.18.0.5 2001:db8::1 4000 80\r\n", false},
		{"v3", v4, v6, "", true},
		{"v1", &net.UDPAddr{}, v6, "", true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v %v", tt.version, tt.client, tt.loc), func(t *testing.T) {
			b, err := proxy.Header(tt.version, tt.client, tt.loc)
			if (err != nil) != tt.wantErr || string(b) != tt.want {
				t.Fatalf("Header = %q, %v; want %q (error %v)", b, err, tt.want, tt.wantErr)
			}
		})
	}
}
