package user

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const issuer = "maas-control"

// Tokens issues and checks console session tokens (JWT, HS256). Safe for concurrent use.
type Tokens struct {
	key    []byte
	expire time.Duration
	now    func() time.Time
}

// NewTokens returns Tokens signing with key; tokens live for expire.
func NewTokens(key []byte, expire time.Duration) *Tokens {
	return &Tokens{key: key, expire: expire, now: time.Now}
}

// Expire is the lifetime of issued tokens.
func (t *Tokens) Expire() time.Duration { return t.expire }

// claims are a session token's claims: the registered ones plus the user's session
// version at issue time. A token whose version differs from the user's current one has
// been ended (password change, admin reset, disabled user).
type claims struct {
	jwt.RegisteredClaims
	SessionVersion int64 `json:"sv"`
}

// Session is what a valid session token says.
type Session struct {
	UserID  int64
	Version int64 // users.session_version when the token was issued
}

// Issue returns a signed token for userID at session version version.
func (t *Tokens) Issue(userID int64, username string, version int64) (string, error) {
	now := t.now()
	claims := claims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer:    issuer,
		Subject:   strconv.FormatInt(userID, 10),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Second)),
		ExpiresAt: jwt.NewNumericDate(now.Add(t.expire)),
		Audience:  jwt.ClaimStrings{username},
	}, SessionVersion: version}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// ErrTokenExpired reports an expired session token.
var ErrTokenExpired = errors.New("session token expired")

// Parse verifies a token and returns its user id and session version.
func (t *Tokens) Parse(raw string) (Session, error) {
	var claims claims
	_, err := jwt.ParseWithClaims(raw, &claims, func(*jwt.Token) (any, error) { return t.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(issuer),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(t.now),
	)
	if errors.Is(err, jwt.ErrTokenExpired) {
		return Session{}, ErrTokenExpired
	}
	if err != nil {
		return Session{}, fmt.Errorf("parse token: %w", err)
	}
	id, err := strconv.ParseInt(claims.Subject, 10, 64)
	if err != nil || id <= 0 {
		return Session{}, errors.New("parse token: bad subject")
	}
	return Session{UserID: id, Version: claims.SessionVersion}, nil
}
