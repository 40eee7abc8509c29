package tenancy_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// TestUserIssuer: users[].issuer (SPEC §5) is optional, kept as written
// through a batch and the bbolt file, and left out of the JSON when empty.
func TestUserIssuer(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	f.must(`[{"op":"put","collection":"users","value":{"id":"zed","tenant":"beta","issuer":"https://login.beta.example.com/"}}]`)
	for id, want := range map[string]string{"zed": "https://login.beta.example.com/", "bob": ""} {
		var e tenancy.Entity
		if err := f.db.View(func(tx *bolt.Tx) (err error) { e, err = tenancy.Get(tx, tenancy.Users, id); return err }); err != nil {
			t.Fatal(err)
		}
		u := e.(*tenancy.User)
		if u.Issuer != want {
			t.Errorf("%s: issuer %q, want %q", id, u.Issuer, want)
		}
		b, _ := json.Marshal(u)
		if got := strings.Contains(string(b), `"issuer"`); got != (want != "") {
			t.Errorf("%s: JSON %s", id, b)
		}
	}
}

func TestUserIssuerIsValidated(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		issuer string // a JSON value
		status int    // 0: accepted
		msg    string
	}{
		"absent is fine":       {``, 0, ""},
		"empty is fine":        {`""`, 0, ""},
		"a URL":                {`"https://idp.example.com/"`, 0, ""},
		"not a string":         {`7`, 422, "issuer"},
		"an object":            {`{"iss":"x"}`, 422, "issuer"},
		"newline":              {`"https://idp.example.com/\n"`, 422, "control character"},
		"NUL":                  {`"https://idp\u0000.example.com/"`, 422, "control character"},
		"DEL":                  {`"https://idp\u007f.example.com/"`, 422, "control character"},
		"C1 control":           {`"https://idp\u0085.example.com/"`, 422, "control character"},
		"at the length bound":  {`"` + strings.Repeat("a", 1024) + `"`, 0, ""},
		"beyond the bound":     {`"` + strings.Repeat("a", 1025) + `"`, 422, "longer than"},
		"unicode is not a ctl": {`"https://idp.exämple.com/"`, 0, ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			doc := `{"id":"zed","tenant":"beta"`
			if c.issuer != "" {
				doc += `,"issuer":` + c.issuer
			}
			doc += `}`
			e, err := tenancy.Decode(tenancy.Users, []byte(doc))
			if c.status == 0 {
				if err != nil {
					t.Fatalf("Decode(%s): %v", doc, err)
				}
				var want string
				if c.issuer != "" {
					_ = json.Unmarshal([]byte(c.issuer), &want)
				}
				if got := e.(*tenancy.User).Issuer; got != want {
					t.Fatalf("issuer %q, want %q", got, want)
				}
				return
			}
			var te *tenancy.Error
			if !errors.As(err, &te) || te.Status != c.status || !strings.Contains(te.Msg, c.msg) {
				t.Fatalf("Decode(%.80s) = %v, want %d containing %q", doc, err, c.status, c.msg)
			}
		})
	}
}
