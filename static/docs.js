// The API reference (/docs): Swagger UI, vendored in static/vendor/swagger-ui-5.35.0,
// rendering the gateway's own /openapi.json. Served under the pages' strict
// Content-Security-Policy: no inline script, no other origin.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No badge from validator.swagger.io: nothing leaves this origin.
    validatorUrl: null,
    defaultModelsExpandDepth: 1,
    displayRequestDuration: true,
  });
});
