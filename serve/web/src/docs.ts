// The /docs page: Swagger UI rendering the binary's own /openapi.json. Everything it needs is
// bundled and embedded; the online validator badge (the one external call) is turned off.
import SwaggerUI from "swagger-ui-dist/swagger-ui-es-bundle.js";
import "swagger-ui-dist/swagger-ui.css";
import "./docs.css";

SwaggerUI({
  dom_id: "#swagger",
  // Relative, like the dashboard, so the page also works behind a reverse proxy under a prefix.
  url: "./openapi.json",
  deepLinking: true,
  validatorUrl: null,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  displayRequestDuration: true,
});
