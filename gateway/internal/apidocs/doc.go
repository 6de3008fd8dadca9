// Package apidocs serves the gateway's API documentation: the OpenAPI 3.1 document of the
// public API (openapi.json, embedded) at /openapi.json, Swagger UI at /docs and ReDoc at
// /redoc. The pages' scripts and styles are vendored from the swagger-ui-dist and redoc npm
// packages (assets/README.md has the versions) and embedded too, so the documentation works
// with no network access and no CDN.
//
// The document is the contract; Compare checks it against a router's registered routes so
// that a route cannot be added or removed without the document following.
package apidocs
