// swagger-ui-dist ships no types for its self-contained bundle; this is the part docs.ts uses.
declare module "swagger-ui-dist/swagger-ui-es-bundle.js" {
  export default function SwaggerUI(options: Record<string, unknown>): unknown;
}
