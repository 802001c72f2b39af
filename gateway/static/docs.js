// Swagger UI over the served OpenAPI document. Everything it loads comes from this origin
// (the page's Content-Security-Policy allows nothing else). "Authorize" takes a bearer
// token; one signed in to the console in this tab is offered already.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,          // the public validator badge would call out
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    onComplete: () => {
      const token = sessionStorage.getItem("flashsale.token");
      if (token) ui.preauthorizeApiKey("bearer", token);
    },
  });
  window.ui = ui;
});
