// typescript-eslint with type information, and only rules that catch real bugs: a promise nobody awaits or
// handles (an unhandled rejection kills the proxy), a switch that forgets a member of a union, unused code, and
// loose equality. Formatting is Prettier's job (.prettierrc.json), not the linter's.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'test/.hf-tmp/**', 'bench/results/**'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
      eqeqeq: ['error', 'always'],
      'no-fallthrough': 'error',
      'no-self-compare': 'error',
      'no-unreachable': 'error',
    },
  },
);
